"""Momentum (EMA) encoders shared by MoCo and BYOL: the update and its cosine schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's schedule: 1 - (1 - base) (cos(pi k / K) + 1) / 2; `base` at step 0, 1 at the last step."""
    progress = min(1.0, step / max(1, total_steps))
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


def momentum_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters take no gradient (only EMA updates); buffers are its own."""
    target = copy.deepcopy(module)
    for param in target.parameters():
        param.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_target <- m theta_target + (1 - m) theta_online, parameters only (batch-norm statistics
    of the target are its own, from its own forward passes, as in MoCo's and BYOL's code)."""
    target_params = list(target.parameters())
    online_params = [param.detach() for param in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1.0 - momentum)
