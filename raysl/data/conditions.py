"""Data conditions as pure functions of labels and sizes: which train images a run pretrains on (quantity,
domain pooling) and which labels an evaluation may use (labeled budget). No Ray.

`to_shape` is the domain pool's stated rule for bringing another dataset's images to the main one's shape.

Every selection is a prefix of one seeded order, so it is nested: with one seed the 5k subset is inside the
10k one, and 10 labels per class are inside 100 per class. A class-balanced order deals the classes round
robin (class 0's first image, class 1's first, ..., then every class's second), so each prefix is balanced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from raysl.config import RunConfig, SubsetConfig
from raysl.errors import UserError


def seeded_order(size: int, seed: int, *stream: int) -> np.ndarray:
    """A permutation of range(size) fixed by (seed, *stream)."""
    return np.random.default_rng([seed, *stream]).permutation(size)


def balanced_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of labelled rows (label >= 0) dealt round robin over the classes, each class in seeded order.
    Once a class runs out, the others keep dealing (the prefix stays balanced while every class has images)."""
    classes = np.unique(labels[labels >= 0])
    if classes.size == 0:
        raise UserError("a class-balanced selection needs labels, and this split has none")
    per_class = [np.flatnonzero(labels == c)[seeded_order(int((labels == c).sum()), seed, int(c))] for c in classes]
    depth = max(len(members) for members in per_class)
    table = np.full((depth, len(per_class)), -1, np.int64)
    for column, members in enumerate(per_class):
        table[: len(members), column] = members
    dealt = table.ravel()
    return dealt[dealt >= 0]


def subset_size(subset: SubsetConfig, total: int) -> int:
    if subset.count is not None:
        return subset.count
    if subset.fraction is not None:
        return max(1, round(subset.fraction * total))
    return total


def subset_order(labels: np.ndarray, subset: SubsetConfig, field: str = "data.subset") -> np.ndarray:
    """The subset's train indices in selection order (a prefix of the seeded order; nested across sizes)."""
    total = len(labels)
    size = subset_size(subset, total)
    if size > total:
        raise UserError(f"{field}.count {size} exceeds the {total} images of the train split")
    if not subset.balanced:
        return seeded_order(total, subset.seed)[:size]
    order = balanced_order(labels, subset.seed)
    classes, available = np.unique(labels[labels >= 0], return_counts=True)
    needed = -(-size // len(classes))  # the first classes get one more when size does not divide
    if available.min() < needed:
        short = ", ".join(f"class {c}: {n}" for c, n in zip(classes, available) if n < needed)
        raise UserError(
            f"{field}: a balanced subset of {size} needs up to {needed} images per class, but {short}; "
            "lower the count or set balanced: false"
        )
    return order[:size]


def repeat_counts(order: np.ndarray, target: int, size: int) -> np.ndarray:
    """Times each of `size` rows appears in an epoch of `target` images drawn from `order` (a prefix of it,
    or all of it repeated, the first `target % len(order)` once more)."""
    counts = np.zeros(size, np.int32)
    if target <= len(order):
        counts[order[:target]] = 1
        return counts
    whole, extra = divmod(target, len(order))
    counts[order] = whole
    counts[order[:extra]] += 1
    return counts


def pretraining_counts(
    run: RunConfig, main_labels: np.ndarray, pool_sizes: Sequence[int] = ()
) -> list[np.ndarray]:
    """Per dataset (main first, then data.pool in order): how many times each train row is pretrained on
    per epoch. The epoch keeps the main dataset's (subset) size, or its full size with epoch_size full;
    data.train_limit (--smoke) caps it; pool entries share it by weight."""
    data = run.data
    main_order = subset_order(main_labels, data.subset)
    epoch = len(main_order) if data.subset.epoch_size == "subset" else len(main_labels)
    if data.train_limit:
        epoch = min(epoch, data.train_limit)
    shares = split_by_weight(epoch, [data.weight, *(entry.weight for entry in data.pool)])
    counts = [repeat_counts(main_order, shares[0], len(main_labels))]
    for index, (size, share) in enumerate(zip(pool_sizes, shares[1:]), start=1):
        counts.append(repeat_counts(seeded_order(size, data.subset.seed, index), share, size))
    return counts


def split_by_weight(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split in proportion to `weights` by largest remainder: shares sum to total, weight 0 gets 0."""
    exact = [total * weight / sum(weights) for weight in weights]
    shares = [int(value) for value in exact]
    by_remainder = sorted(range(len(weights)), key=lambda index: shares[index] - exact[index])
    for index in by_remainder[: total - sum(shares)]:
        shares[index] += 1
    return shares


def budget_name(budget: int | float | str) -> str:
    """A budget as metrics and reports name it: all, 10-per-class, 10%."""
    if budget == "all":
        return "all"
    if isinstance(budget, int):
        return f"{budget}-per-class"
    return f"{budget * 100:g}%"


def budget_indices(labels: np.ndarray, budget: int | float | str, seed: int) -> np.ndarray:
    """The labelled bank rows an evaluation may use: every labelled row, `budget` per class (an int), or a
    fraction of them (a float); seeded and nested. A class with fewer images than asked gives all it has."""
    labelled = np.flatnonzero(labels >= 0)
    if budget == "all":
        return labelled
    if isinstance(budget, int):
        order = balanced_order(labels, seed)
        classes = np.unique(labels[labelled])
        taken = np.zeros(int(classes.max()) + 1, np.int64)
        keep = []
        for index in order:  # the first `budget` of each class, in the nested order
            if taken[labels[index]] < budget:
                taken[labels[index]] += 1
                keep.append(index)
        return np.sort(np.asarray(keep, np.int64))
    size = max(1, round(budget * len(labelled)))
    return np.sort(labelled[seeded_order(len(labelled), seed)[:size]])


def to_shape(images: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """uint8 (N, H, W, C) images brought to (H', W', C') = `shape`: resized (bilinear, antialiased) to H' x W',
    gray -> RGB by repeating the channel, RGB -> gray by ITU-R 601 luma. Unchanged when already that shape."""
    height, width, channels = (int(size) for size in shape)
    if tuple(images.shape[1:]) == (height, width, channels):
        return images
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if tensor.shape[1] == 3 and channels == 1:
        tensor = (tensor * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    elif tensor.shape[1] == 1 and channels == 3:
        tensor = tensor.expand(-1, 3, -1, -1)
    if tensor.shape[2:] != (height, width):
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return tensor.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
