"""W-MSE (Ermolov et al., 2021): embeddings whitened per sub-batch, then the MSE between L2-normalised
whitened embeddings of every pair of an image's views (d views give d(d-1)/2 pairs).

Whitening: centre the sub-batch, Cholesky-factor the shrunk covariance (1 - eps) cov + eps I = L L^T and
multiply by L^-1, in float32 with autocast off. The batch is split into sub-batches of `w_size` by a
random permutation, `w_iter` times; every view of an image lands in the same sub-batch index set, and
each view's sub-batch is whitened on its own (as the official code does).

Across ranks: every view's embeddings are gathered (with gradient), so sub-batches are drawn from the
global batch with one permutation broadcast from rank 0; every rank computes the same global loss, and
the gather's backward hands each rank the gradient of its own rows. 1 rank or 2 give the same loss.

A failed Cholesky (a singular covariance: w_size too close to the embedding dim, collapsed embeddings,
eps 0) raises `WhiteningError` naming the fields to change; eps is never raised silently.
"""

from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raysl.config import ModelConfig, WMSEConfig
from raysl.methods.backbones import mlp
from raysl.methods.distributed import gather_with_grad, rank_and_world_size


class WhiteningError(RuntimeError):
    """The shrunk covariance of a sub-batch was not positive definite."""


def whiten(embeddings: torch.Tensor, eps: float) -> torch.Tensor:
    """(n, d) -> (n, d) with (for eps = 0) identity sample covariance: (x - mean) L^-T, L L^T = shrunk cov."""
    with torch.autocast(embeddings.device.type, enabled=False):
        x = embeddings.float()
        n, dim = x.shape
        centred = x - x.mean(dim=0, keepdim=True)
        covariance = centred.T @ centred / (n - 1)
        eye = torch.eye(dim, device=x.device, dtype=x.dtype)
        shrunk = (1 - eps) * covariance + eps * eye
        factor, info = torch.linalg.cholesky_ex(shrunk)
        if int(info) != 0:
            raise WhiteningError(
                f"W-MSE whitening failed: the covariance of a sub-batch of {n} embeddings (dim {dim}) is not positive "
                f"definite (Cholesky, eps={eps}). Raise method.eps (e.g. 0.01) or method.w_size, or lower "
                "optimizer.lr if the embeddings collapsed."
            )
        inverse = torch.linalg.solve_triangular(factor, eye, upper=False)  # L^-1
        return centred @ inverse.T


def normalized_mse(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    """mean_i || x0_i/|x0_i| - x1_i/|x1_i| ||^2 = 2 - 2 cos."""
    return (2 - 2 * (F.normalize(x0, dim=1) * F.normalize(x1, dim=1)).sum(dim=1)).mean()


def wmse_loss(embeddings: list[torch.Tensor], w_size: int, eps: float, permutations: list[torch.Tensor]) -> torch.Tensor:
    """embeddings: one (N, d) tensor per view (row i of each is image i); one permutation of range(N)
    per whitening iteration. Mean over iterations and view pairs of normalized_mse of whitened views."""
    n = embeddings[0].shape[0]
    if n % w_size:
        raise ValueError(f"batch of {n} is not a multiple of w_size {w_size}")
    pairs = list(itertools.combinations(range(len(embeddings)), 2))
    total = embeddings[0].new_zeros((), dtype=torch.float32)
    for permutation in permutations:
        whitened = [torch.empty(view.shape, dtype=torch.float32, device=view.device) for view in embeddings]
        for index in permutation.view(-1, w_size):
            for view, out in zip(embeddings, whitened):
                out[index] = whiten(view[index], eps)
        for i, j in pairs:
            total = total + normalized_mse(whitened[i], whitened[j])
    return total / (len(permutations) * len(pairs))


class WMSE(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: WMSEConfig):
        super().__init__()
        self.config = method
        self.backbone = backbone
        self.projector = mlp(out_dim, model.projector_hidden, model.projector_out)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        n = views[0].shape[0]
        z = self.projector(self.backbone(torch.cat(views)))  # views share a size: one backbone pass
        per_view = [gather_with_grad(z[i * n : (i + 1) * n]) for i in range(len(views))]
        total = per_view[0].shape[0]
        permutations = torch.stack([torch.randperm(total, device=z.device) for _ in range(self.config.w_iter)])
        _, world_size = rank_and_world_size()
        if world_size > 1:
            dist.broadcast(permutations, src=0)
        return wmse_loss(per_view, self.config.w_size, self.config.eps, list(permutations))

    def after_step(self, step: int, total_steps: int) -> None:
        """W-MSE has no momentum encoder."""
