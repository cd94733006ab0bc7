"""BYOL (Grill et al., 2020): an online network (backbone, projector, predictor) regresses the
projections of a target network, an EMA of the online backbone + projector with rate tau rising from
`momentum` to 1 on a cosine schedule. Loss per pair 2 - 2 cos(q, sg(z')), symmetrised over the views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import BYOLConfig, ModelConfig
from raysl.methods.backbones import mlp
from raysl.methods.momentum import cosine_momentum, ema_update, momentum_copy


def regression_loss(predictions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean_i || q_i/|q_i| - z_i/|z_i| ||^2 = 2 - 2 cos(q_i, z_i); the targets take no gradient."""
    return (2 - 2 * F.cosine_similarity(predictions.float(), targets.detach().float(), dim=1)).mean()


def byol_loss(q1: torch.Tensor, q2: torch.Tensor, target1: torch.Tensor, target2: torch.Tensor) -> torch.Tensor:
    """Symmetrised: view 1's prediction against view 2's target and the reverse (the paper sums the two;
    this is their mean, so the scale matches SimSiam's)."""
    return (regression_loss(q1, target2) + regression_loss(q2, target1)) / 2


class BYOL(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: BYOLConfig):
        super().__init__()
        self.config = method
        self.backbone = backbone
        self.projector = mlp(out_dim, model.projector_hidden, model.projector_out)
        self.predictor = mlp(model.projector_out, method.predictor_hidden, model.projector_out)
        self.target = momentum_copy(nn.Sequential(self.backbone, self.projector))

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views
        n = first.shape[0]
        both = torch.cat([first, second])
        q = self.predictor(self.projector(self.backbone(both)))
        with torch.no_grad():
            targets = self.target(both)
        return byol_loss(q[:n], q[n:], targets[:n], targets[n:])

    def momentum_at(self, step: int, total_steps: int) -> float:
        return cosine_momentum(self.config.momentum, step, total_steps)

    def after_step(self, step: int, total_steps: int) -> None:
        ema_update(self.target, nn.Sequential(self.backbone, self.projector), self.momentum_at(step, total_steps))
