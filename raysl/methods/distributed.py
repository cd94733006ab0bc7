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


@torch.no_grad()
def gather_uneven(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every rank's `tensor` along dim 0 in rank order, where rank r holds counts[r] rows (padded to
    the largest for all_gather, then trimmed). The identity without a process group."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return tensor
    largest = max(counts)
    padded = tensor.new_zeros((largest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


@torch.no_grad()
def sum_over_ranks(values: list[float], device: torch.device | str = "cpu") -> list[float]:
    """Element-wise sum of `values` over ranks (float64); the values themselves without a process group."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, source: int = 0) -> None:
    """Every rank's buffers (batch-norm running statistics) set to rank `source`'s. Under DDP each rank updates
    its own running statistics from its own batches after the broadcast at a forward's start, so after an epoch
    they differ; features computed for one bank must come from one model. Nothing without a process group."""
    _, world_size = rank_and_world_size()
    if world_size == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, source)
