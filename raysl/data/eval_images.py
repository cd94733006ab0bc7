"""The evaluation images of a run (kNN bank and queries, probe sets): read on demand from the prepared shards,
shard by shard, decoded a batch ahead, through the evaluation transform; each rank its contiguous share.

Imports raysl.ingest, raysl.views, raysl.data.conditions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from raysl.data.conditions import to_shape
from raysl.ingest.dataset import channels_of, is_encoded, shard_row_counts, split_tables
from raysl.ingest.shards import read_table
from raysl.io.storage import open_filesystem


def eval_pixels(column: Sequence[bytes], shape: Sequence[int], channels: int, crop_fraction: float) -> np.ndarray:
    """An encoded dataset's rows (stored with `channels`) as evaluation images in `shape` (H, W, C): the
    evaluation transform at H (square), then brought to C channels (and to W when H != W) by to_shape."""
    from raysl.views.evaluation import eval_images

    height, width, out_channels = (int(size) for size in shape)
    images = eval_images(list(column), height, channels, crop_fraction=crop_fraction, workers=eval_threads())
    return to_shape(images, (height, width, out_channels))


def eval_threads() -> int:
    """Threads that decode evaluation images (PIL and simplejpeg release the GIL): the process's torch threads."""
    import torch

    return max(1, torch.get_num_threads())


def load_eval_split(uri: str, manifest: dict, split: str, shape: Sequence[int], *, limit: int | None,
                    label_columns: Sequence[str], crop_fraction: float = 0.875) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """An encoded dataset's split: its first `limit` rows as evaluation images uint8 (N, *shape) and their label
    columns (int64)."""
    images, labels = [], {column: [] for column in label_columns}
    for table in split_tables(uri, manifest, split, ["image", *label_columns], limit):
        if table.num_rows == 0:
            continue
        images.append(eval_pixels(table.column("image").to_pylist(), shape, channels_of(manifest), crop_fraction))
        for column in label_columns:
            labels[column].append(table.column(column).to_numpy().astype(np.int64))
    if not images:
        return np.empty((0, *shape), np.uint8), {column: np.empty(0, np.int64) for column in label_columns}
    return np.concatenate(images), {column: np.concatenate(parts) for column, parts in labels.items()}


def balanced_rows(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """Row numbers (sorted) of a class-balanced subset of at most `limit` labelled rows: `limit // classes` of
    every class, one more for the first `limit % classes` classes, the first in stored order (rows were shuffled
    when prepared); a class with fewer rows gives all it has. Unlabelled rows (-1) are never chosen. None: all rows."""
    if limit is None or limit >= len(labels):
        return np.arange(len(labels), dtype=np.int64)
    classes = np.unique(labels[labels >= 0])
    if len(classes) == 0:
        return np.arange(min(limit, len(labels)), dtype=np.int64)
    quota, extra = divmod(limit, len(classes))
    chosen = [np.flatnonzero(labels == label)[: quota + (position < extra)] for position, label in enumerate(classes)]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def share_bounds(count: int, rank: int, world: int) -> tuple[int, int]:
    """Rank's contiguous share [start, stop) of `count` items split into `world` parts that differ by at most one,
    in rank order (gathering the shares rank by rank gives the items in order)."""
    return rank * count // world, (rank + 1) * count // world


class EvalImages:
    """One split's evaluation images, read on demand in the evaluation shape (H, W, C): the rows `rows` (sorted
    row numbers in stored order), divided across ranks in contiguous shares (rank r: the r-th of `world` equal
    parts), so that gathering the shares in rank order gives one rank's order. Pixels datasets are brought to
    `shape` by to_shape, encoded ones by the evaluation transform. A rank's share is kept decoded after its first
    pass when it fits in `cache_bytes`; otherwise every pass streams it shard by shard (memory: a shard and a
    batch of images)."""

    def __init__(self, uri: str, manifest: dict, split: str, shape: Sequence[int], rows: np.ndarray, *,
                 crop_fraction: float = 0.875, cache_bytes: float = 0.0):
        self.uri, self.manifest, self.split = uri, manifest, split
        self.shape = tuple(int(size) for size in shape)
        self.rows = np.asarray(rows, np.int64)
        self.crop_fraction, self.cache_bytes = crop_fraction, cache_bytes
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._counts: list[tuple[str, int]] | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def bounds(self, rank: int, world: int) -> tuple[int, int]:
        """The positions [start, stop) in `rows` of rank's share."""
        return share_bounds(len(self.rows), rank, world)

    def share(self, rank: int = 0, world: int = 1) -> np.ndarray:
        start, stop = self.bounds(rank, world)
        return self.rows[start:stop]

    def array(self) -> np.ndarray:
        """Every row's image, uint8 (N, H, W, C), in one array (tests and benchmarks; training never holds them)."""
        batches = list(self.batches())
        return np.concatenate(batches) if batches else np.empty((0, *self.shape), np.uint8)

    def batches(self, rank: int = 0, world: int = 1, batch_size: int = 256) -> Iterator[np.ndarray]:
        """Rank's share as uint8 (n, H, W, C) batches of `batch_size` (the last may be smaller), in row order."""
        cached = self._cache.get((rank, world))
        if cached is not None:
            for start in range(0, len(cached), batch_size):
                yield cached[start : start + batch_size]
            return
        share = self.share(rank, world)
        keep = len(share) * int(np.prod(self.shape)) <= self.cache_bytes
        kept = []
        pending: list[np.ndarray] = []
        held = 0
        for images in self._read(share, batch_size):
            pending.append(images)
            held += len(images)
            while held >= batch_size:
                merged = np.concatenate(pending) if len(pending) > 1 else pending[0]
                batch, rest = merged[:batch_size], merged[batch_size:]
                pending, held = ([rest] if len(rest) else []), len(rest)
                if keep:
                    kept.append(batch)
                yield batch
        if held:
            batch = np.concatenate(pending)
            if keep:
                kept.append(batch)
            yield batch
        if keep:
            self._cache[(rank, world)] = np.concatenate(kept) if kept else np.empty((0, *self.shape), np.uint8)

    def _read(self, share: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
        """The images of `share` (sorted row numbers), shard by shard, decoded `batch_size` rows at a time."""

        if len(share) == 0:
            return
        filesystem, root = open_filesystem(self.uri)
        if self._counts is None:  # footers read once per evaluation set when the manifest lacks row counts
            self._counts = shard_row_counts(self.uri, self.manifest, self.split)
        first = 0
        for shard, count in self._counts:
            wanted = share[(share >= first) & (share < first + count)] - first
            first += count
            if len(wanted) == 0:
                continue
            table = read_table(filesystem, f"{root}/{shard}", ["image"], uri=self.uri, shard=shard, manifest=self.manifest)
            column = table.column("image")
            contiguous = int(wanted[-1]) - int(wanted[0]) + 1 == len(wanted)  # a rank's share: a zero-copy slice
            column = column.slice(int(wanted[0]), len(wanted)) if contiguous else column.take(pa.array(wanted))
            for start in range(0, len(column), batch_size):
                part = column.slice(start, batch_size)
                yield eval_rows(part, self.manifest, self.shape, self.crop_fraction)
            del table, column


def eval_rows(column: pa.ChunkedArray | pa.Array, manifest: dict, shape: Sequence[int], crop_fraction: float) -> np.ndarray:
    """Stored image rows as evaluation images uint8 (N, *shape): pixels brought to the shape (to_shape), encoded
    files by the evaluation transform (eval_pixels). The monitor (EvalImages) and `raysl embed` both use it."""
    from raysl.ingest.dataset import stored_pixels

    if isinstance(column, pa.Array):
        column = pa.chunked_array([column])
    if is_encoded(manifest):
        return eval_pixels(column.to_pylist(), shape, channels_of(manifest), crop_fraction)
    return to_shape(stored_pixels(column, tuple(manifest["image_shape"])), shape)
