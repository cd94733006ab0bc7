"""SimCLR (Chen et al., 2020): two views, NT-Xent over 2N embeddings, negatives from every rank."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import ModelConfig, SimCLRConfig
from raysl.methods.backbones import mlp
from raysl.methods.distributed import gather_with_grad, rank_and_world_size


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Normalised-temperature cross-entropy for n local pairs (z1[i], z2[i]).

    Candidates are the 2N embeddings of all ranks (N = n x world size); each anchor's positive is its
    pair, the other 2N - 2 are negatives, itself is excluded. Returns the mean over the 2n local
    anchors; averaged over ranks (as DDP averages gradients) that is the mean over all 2N anchors.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    n = z1.shape[0]
    rank, world_size = rank_and_world_size()
    all_z1, all_z2 = gather_with_grad(z1), gather_with_grad(z2)  # (N, d) each
    total = n * world_size
    anchors = torch.cat([z1, z2])  # (2n, d)
    candidates = torch.cat([all_z1, all_z2])  # (2N, d)
    logits = anchors @ candidates.T / temperature  # (2n, 2N)
    local = torch.arange(n, device=z1.device) + rank * n
    self_index = torch.cat([local, local + total])
    positive_index = torch.cat([local + total, local])
    rows = torch.arange(2 * n, device=z1.device)
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[rows, self_index] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    return F.cross_entropy(logits, positive_index)


class SimCLR(nn.Module):
    """Backbone + projector; the loss of two views is NT-Xent of their projections."""

    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: SimCLRConfig):
        super().__init__()
        self.temperature = method.temperature
        self.backbone = backbone
        self.projector = mlp(out_dim, model.projector_hidden, model.projector_out)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views
        n = first.shape[0]
        # One backbone pass for both views (they share a size): BN sees both, as in the paper's code.
        z = self.projector(self.backbone(torch.cat([first, second])))
        return nt_xent(z[:n], z[n:], self.temperature)

    def after_step(self, step: int, total_steps: int) -> None:
        """Hook for methods with momentum encoders; SimCLR has none."""
