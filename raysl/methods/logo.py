"""LoGo (Zhang et al., CVPR 2022: "Leverage your local and global representations"), over MoCo or SimSiam.

Each image gives global crops (large: scale lower bound r_g) and local crops (small: scale upper bound
r_l), declared as crop specs with role global / local. The loss is

    l_gg + l_lg + lambda x l_ll

- l_gg: the base method's loss between global views (every ordered pair; for 2 globals that is the base
  method's symmetric loss);
- l_lg: each local view pulled toward every global view of its image, the global side a stop-gradient
  target (MoCo: the key encoder's keys; SimSiam: detached projections);
- l_ll: local-to-local *dissimilarity*: two local crops of one image may show different parts, so LoGo
  pushes them apart, measured by a learned affinity omega (an MLP on the pair). omega is trained to score
  same-image local pairs (with a little noise) high and different-image pairs low, on detached embeddings;
  the encoder minimises omega's score of its same-image local pairs, with omega held fixed.

Differences from the official code (ztt1024/LoGo-SSL, MoCo only): one optimiser step for everything;
l_ll is weighted by lambda (as the paper's loss and the seed review state) where the official code takes a
separate step whose gradient is clipped to 0.015 x the norm of the InfoNCE gradient; l_gg and l_lg are
means over their pairs (the official code divides their sum by the pair count). Each crop resolution
runs through the backbone once (all global views together, all local views together).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from raysl.config import LoGoMoCoConfig, LoGoSimSiamConfig, ModelConfig
from raysl.methods.moco import MoCo, moco_loss
from raysl.methods.simsiam import SimSiam, negative_cosine

PairLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
AFFINITY_NOISE = 0.3  # std x sqrt(dim) of the noise added to omega's positive pairs (official code)


def global_global_loss(outputs: list[torch.Tensor], targets: list[torch.Tensor], pair_loss: PairLoss) -> torch.Tensor:
    """Mean of pair_loss(outputs[a], targets[b]) over ordered pairs of distinct global views a != b."""
    pairs = [(a, b) for a in range(len(outputs)) for b in range(len(targets)) if a != b]
    return sum(pair_loss(outputs[a], targets[b]) for a, b in pairs) / len(pairs)


def local_global_loss(local_outputs: list[torch.Tensor], global_targets: list[torch.Tensor], pair_loss: PairLoss) -> torch.Tensor:
    """Mean of pair_loss(local, sg(global)) over every (local view, global view): gradients reach the
    local views only."""
    pairs = list(itertools.product(local_outputs, global_targets))
    return sum(pair_loss(local, target.detach()) for local, target in pairs) / len(pairs)


class Affinity(nn.Module):
    """omega: scores a pair (a, b) of embeddings as cos(b, mlp([a, b])) (the official Regressor_cos)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, dim),
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(b, self.mlp(torch.cat([a, b], dim=1)), dim=1)


def affinity_training_loss(affinity: nn.Module, local_embeddings: list[torch.Tensor], generator: torch.Generator | None = None) -> torch.Tensor:
    """omega's own objective on detached embeddings: score same-image local pairs (plus noise) high and
    pairs of different images (the second view rolled by one image) low."""
    total, count = 0.0, 0
    for x, y in itertools.combinations([e.detach().float() for e in local_embeddings], 2):
        dim = x.shape[1]
        noise = [AFFINITY_NOISE / dim**0.5 * torch.randn(x.shape, generator=generator, device=x.device) for _ in range(2)]
        positive = -(affinity(x + noise[0], y + noise[1]) + affinity(y + noise[0], x + noise[1])) / 2
        negative = (affinity(x, y.roll(1, dims=0)) + affinity(y, x.roll(1, dims=0))) / 2
        total = total + (positive + negative).mean()
        count += 1
    return total / count


def local_local_loss(affinity: nn.Module, local_embeddings: list[torch.Tensor]) -> torch.Tensor:
    """l_ll: omega's score of same-image local pairs, to be minimised by the encoder. omega's parameters
    are detached here, so this term trains the encoder only (omega learns from its own objective)."""
    frozen = {name: tensor.detach() for name, tensor in itertools.chain(affinity.named_parameters(), affinity.named_buffers())}
    pairs = list(itertools.combinations([e.float() for e in local_embeddings], 2))
    return sum(functional_call(affinity, frozen, (x, y)).mean() for x, y in pairs) / len(pairs)


class LoGo(nn.Module):
    """LoGo over a base method ('logo-moco' or 'logo-simsiam'); `roles` gives each view's crop role."""

    def __init__(self, backbone: nn.Module, out_dim: int, model: ModelConfig, method: LoGoMoCoConfig | LoGoSimSiamConfig,
                 roles: list[str]):
        super().__init__()
        self.config = method
        self.roles = list(roles)
        base = MoCo if method.name == "logo-moco" else SimSiam
        self.base = base(backbone, out_dim, model, method)
        self.affinity = Affinity(model.projector_out, method.affinity_hidden)
        self.last_terms: dict[str, torch.Tensor] = {}
        """The last step's loss terms, detached (read once an epoch: no device sync per step)."""

    @property
    def backbone(self) -> nn.Module:
        return self.base.backbone

    @property
    def projector(self) -> nn.Module:
        return self.base.projector

    def _split(self, views: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        globals_ = [view for view, role in zip(views, self.roles) if role == "global"]
        locals_ = [view for view, role in zip(views, self.roles) if role == "local"]
        return globals_, locals_

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        globals_, locals_ = self._split(views)
        if self.config.name == "logo-moco":
            l_gg, l_lg, local_embeddings = self._moco_terms(globals_, locals_)
        else:
            l_gg, l_lg, local_embeddings = self._simsiam_terms(globals_, locals_)
        l_ll = local_local_loss(self.affinity, local_embeddings)
        l_omega = affinity_training_loss(self.affinity, local_embeddings)
        self.last_terms = {
            name: term.detach() for name, term in (("l_gg", l_gg), ("l_lg", l_lg), ("l_ll", l_ll), ("l_omega", l_omega))
        }
        return l_gg + l_lg + self.config.ll_weight * l_ll + l_omega

    def _moco_terms(self, globals_, locals_):
        base, tau = self.base, self.config.temperature
        n = globals_[0].shape[0]
        global_queries = base.query(torch.cat(globals_)).split(n)
        local_queries = base.query(torch.cat(locals_)).split(n)
        keyed = [base.keys(view) for view in globals_]
        keys = [mine for mine, _ in keyed]
        negatives = base.queue.snapshot()
        pair = lambda q, k: moco_loss(q, k, negatives, tau)  # noqa: E731
        l_gg = global_global_loss(list(global_queries), keys, pair)
        l_lg = local_global_loss(list(local_queries), keys, pair)
        base.queue.enqueue(torch.cat([everyone for _, everyone in keyed]))
        return l_gg, l_lg, list(local_queries)

    def _simsiam_terms(self, globals_, locals_):
        n = globals_[0].shape[0]
        global_z, global_p = self.base.project(torch.cat(globals_))
        local_z, local_p = self.base.project(torch.cat(locals_))
        l_gg = global_global_loss(list(global_p.split(n)), list(global_z.split(n)), negative_cosine)
        l_lg = local_global_loss(list(local_p.split(n)), list(global_z.split(n)), negative_cosine)
        return l_gg, l_lg, [F.normalize(z.float(), dim=1) for z in local_z.split(n)]

    def after_step(self, step: int, total_steps: int) -> None:
        self.base.after_step(step, total_steps)
