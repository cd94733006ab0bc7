"""Optimisers (SGD, LARS, AdamW) and the warm-up + cosine learning-rate schedule, per step."""

from __future__ import annotations

import math

import torch
from torch import nn

from raysl.config import OptimizerConfig, ScheduleConfig


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise adaptive rate scaling (You et al., 2017).

    Each weight matrix's update is scaled by trust x ||w|| / (||g|| + wd x ||w||); biases and norm
    parameters (1-D tensors) get neither weight decay nor adaptation, as in SimCLR / BYOL. torch has
    no LARS, hence this one.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                if param.ndim > 1:
                    grad = grad.add(param, alpha=group["weight_decay"])
                    weight_norm, grad_norm = torch.linalg.norm(param), torch.linalg.norm(grad)
                    ratio = torch.where(
                        (weight_norm > 0) & (grad_norm > 0), group["trust"] * weight_norm / grad_norm, 1.0
                    )
                    grad = grad.mul(ratio)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.clone(grad).detach()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, config: OptimizerConfig, batch_size: int | None = None) -> torch.optim.Optimizer:
    """The optimiser at config.lr, scaled for a global batch of `batch_size` by config.lr_scaling (None: unscaled)."""
    # Momentum encoders (MoCo's key encoder, BYOL's target) are parameters without gradients: not stepped.
    params = [param for param in model.parameters() if param.requires_grad]
    lr = config.scaled_lr(batch_size) if batch_size else config.lr
    if config.name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.name == "lars":
        return LARS(params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay, trust=config.lars_trust)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}")


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_ratio: float) -> float:
    """Learning-rate multiplier: linear from 1/warmup to 1 over warmup_steps, then cosine to final_ratio."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, steps_per_epoch: int, epochs: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = round(config.warmup_epochs * steps_per_epoch)
    total = steps_per_epoch * epochs
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup, total, config.final_lr_ratio)
    )
