"""Linear probe: a linear classifier trained on frozen features computed once. Pure torch, CPU or GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raysl.config import ProbeConfig
from raysl.training.monitor import topk_accuracy


class Standardize(nn.Module):
    """Per-feature (x - mean) / std with the training features' statistics (fixed, not learned)."""

    def __init__(self, features: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", features.mean(dim=0))
        self.register_buffer("std", features.std(dim=0).clamp_min(1e-6) if features.shape[0] > 1 else torch.ones_like(features[0]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.mean) / self.std


def train_linear_probe(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, config: ProbeConfig, seed: int = 0
) -> nn.Module:
    """Fit a linear classifier to `features` (N, D) -> `labels` (N,): features standardised with their own
    statistics, then a linear layer (with bias) trained by AdamW on cross-entropy, `config.epochs` passes in
    shuffled mini-batches, cosine-decayed learning rate. Still linear in the features."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    probe = nn.Sequential(Standardize(features), nn.Linear(features.shape[1], num_classes)).to(features.device)
    optimizer = torch.optim.AdamW(probe[1].parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-features.shape[0] // config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    for _ in range(config.epochs):
        order = torch.randperm(features.shape[0], generator=generator).to(features.device)
        for start in range(0, features.shape[0], config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = F.cross_entropy(probe(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe


@torch.no_grad()
def probe_accuracy(probe: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[int, float]:
    """Top-1 and top-5 accuracy of the probe on held-out features."""
    return topk_accuracy(probe(features), labels, (1, 5))
