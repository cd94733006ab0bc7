"""MoCo v2 (He et al., 2020; Chen et al., 2020): a query encoder trained against keys from an EMA key
encoder and a queue of K earlier keys as negatives.

- The key encoder (backbone + projector) is an EMA of the query encoder, updated after each optimiser
  step (`after_step`), with momentum m fixed or cosine-scheduled to 1.
- The queue is a registered buffer (dim, K) with a pointer, so checkpoints carry it; each step enqueues
  the keys of every rank (gathered), oldest first out. K must be a multiple of the keys enqueued per step
  (checked by the config schema, for every value a sweep can draw).
- Batch-norm leak: Shuffle-BN, as in the paper. Key images are gathered from every rank, shuffled by
  one permutation (from rank 0), each rank encodes its slice in `shuffle_bn_groups` groups, and keys are
  gathered and unshuffled. A key's BN statistics so never come from the group its query was normalised
  with. (SyncBN was the alternative: torch's SyncBatchNorm runs on CUDA only, so it cannot run the CPU /
  gloo path raysl also supports, and Shuffle-BN is what the paper measured.)
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from raysl.config import MoCoConfig, ModelConfig
from raysl.methods.backbones import mlp
from raysl.methods.distributed import gather_no_grad, rank_and_world_size
from raysl.methods.momentum import cosine_momentum, ema_update, momentum_copy


def moco_loss(queries: torch.Tensor, keys: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of MoCo: logits [q . k+, q . queue] / tau, cross-entropy with the positive at index 0.

    queries, keys: (n, d) L2-normalised (keys carry no gradient); queue: (d, K) L2-normalised negatives.
    """
    positive = (queries * keys).sum(dim=1, keepdim=True)
    negative = queries @ queue
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(queries.shape[0], dtype=torch.long, device=queries.device))


class KeyQueue(nn.Module):
    """Ring buffer of K keys (d, K) plus the write pointer, both buffers (saved in state_dict)."""

    def __init__(self, dim: int, size: int):
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(dim, size), dim=0))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (n, d) over the oldest n entries; n must divide K (the schema guarantees it)."""
        n, size = keys.shape[0], self.keys.shape[1]
        if size % n:
            raise ValueError(f"queue size {size} is not a multiple of the {n} keys enqueued")
        start = int(self.pointer)
        self.keys[:, start : start + n] = keys.T.to(self.keys.dtype)
        self.pointer.fill_((start + n) % size)

    def snapshot(self) -> torch.Tensor:
        # A copy: the loss's graph keeps it while the buffer is overwritten by enqueue.
        return self.keys.clone().detach()


@torch.no_grad()
def shuffled_keys(encoder: nn.Module, images: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle-BN key encoding. Returns (this rank's keys in its images' order, every rank's keys)."""
    rank, world_size = rank_and_world_size()
    n = images.shape[0]
    everyone = gather_no_grad(images)
    order = torch.randperm(everyone.shape[0], device=images.device)
    if world_size > 1:
        dist.broadcast(order, src=0)
    mine = everyone[order[rank * n : (rank + 1) * n]]
    keys = torch.cat([encoder(group) for group in mine.tensor_split(groups)])
    keys = F.normalize(keys.float(), dim=1)
    gathered = gather_no_grad(keys)  # in shuffled order
    unshuffled = torch.empty_like(gathered)
    unshuffled[order] = gathered
    return unshuffled[rank * n : (rank + 1) * n], unshuffled


class MoCo(nn.Module):
    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: MoCoConfig):
        super().__init__()
        self.config = method
        self.backbone = backbone
        self.projector = mlp(out_dim, model.projector_hidden, model.projector_out)
        self.key_encoder = momentum_copy(nn.Sequential(self.backbone, self.projector))
        self.queue = KeyQueue(model.projector_out, method.queue_size)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(images)).float(), dim=1)

    def keys(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return shuffled_keys(self.key_encoder, images, self.config.shuffle_bn_groups)

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        first, second = views
        tau = self.config.temperature
        negatives = self.queue.snapshot()
        if self.config.symmetric:
            n = first.shape[0]
            queries = self.query(torch.cat([first, second]))
            key1, all_key1 = self.keys(first)
            key2, all_key2 = self.keys(second)
            loss = (moco_loss(queries[:n], key2, negatives, tau) + moco_loss(queries[n:], key1, negatives, tau)) / 2
            self.queue.enqueue(torch.cat([all_key1, all_key2]))
        else:
            key2, all_key2 = self.keys(second)
            loss = moco_loss(self.query(first), key2, negatives, tau)
            self.queue.enqueue(all_key2)
        return loss

    def momentum_at(self, step: int, total_steps: int) -> float:
        if self.config.momentum_schedule == "cosine":
            return cosine_momentum(self.config.momentum, step, total_steps)
        return self.config.momentum

    def after_step(self, step: int, total_steps: int) -> None:
        """After the optimiser's step: theta_k <- m theta_k + (1 - m) theta_q."""
        ema_update(self.key_encoder, nn.Sequential(self.backbone, self.projector), self.momentum_at(step, total_steps))
