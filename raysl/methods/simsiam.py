"""SimSiam (Chen & He, 2021): no negatives, no momentum encoder; a predictor on one branch and a
stop-gradient on the other, symmetrised: L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2, D = -cosine."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import ModelConfig, SimSiamConfig
from raysl.methods.backbones import mlp


def negative_cosine(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean_i cos(p_i, sg(z_i)): the target side takes no gradient."""
    return -F.cosine_similarity(predictions.float(), targets.detach().float(), dim=1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    return negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2


class SimSiam(nn.Module):
    """Backbone + projector (last layer batch-normed, as in the paper) + bottleneck predictor."""

    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: SimSiamConfig):
        super().__init__()
        self.backbone = backbone
        self.projector = mlp(out_dim, model.projector_hidden, model.projector_out, last_bn=True)
        self.predictor = mlp(model.projector_out, method.predictor_hidden, model.projector_out)

    def project(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, p) for a batch of one crop size: projections and predictions."""
        z = self.projector(self.backbone(images))
        return z, self.predictor(z)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views
        n = first.shape[0]
        z, p = self.project(torch.cat([first, second]))
        return simsiam_loss(p[:n], p[n:], z[:n], z[n:])

    def after_step(self, step: int, total_steps: int) -> None:
        """SimSiam has no momentum encoder."""
