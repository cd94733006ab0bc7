"""Gather helpers that are the identity without a process group, so the same loss runs on one CPU."""

from __future__ import annotations

import torch
import torch.distributed as dist


def rank_and_world_size() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's slice and returns it.
    (torch.distributed.nn.functional.all_gather does the same but is deprecated since torch 2.10.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world_size = rank_and_world_size()
        ctx.rank, ctx.size = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate `tensor` (same shape on every rank) from every rank along dim 0, keeping gradients
    to every rank's part: each rank's slice gets the sum of all ranks' gradients for it."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)
