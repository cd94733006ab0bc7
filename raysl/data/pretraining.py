"""What a run pretrains on, per epoch: the data conditions (subset, domain pool, corruption) planned once on
the driver and applied to each batch of rows wherever the views are made (a Ray Data actor, or in-process).

The plan holds, per dataset (main first, then data.pool), its shards and how many times each row appears
per epoch (None: every row once). A batch of rows is decoded, repeated by those counts, brought to the main
dataset's shape, corrupted (fixed per image) and returned as uint8 (N, H, W, C), ready for the view maker.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa

from raysl.config import CorruptionConfig, RunConfig
from raysl.data.conditions import pretraining_counts, to_shape
from raysl.data.corruptions import corrupt, describe, resized_shape, sample_grid_png
from raysl.data.eval_images import load_eval_split
from raysl.errors import UserError
from raysl.ingest.dataset import (
    channels_of,
    is_encoded,
    load_labels,
    load_split,
    read_manifest,
    split_files,
    split_tables,
)
from raysl.ingest.shards import DamagedShardError, find_damage, shard_damage
from raysl.io.storage import delete_file, read_text, write_bytes, write_text

# Corruption randomness is seeded by (seed, image index); pool datasets' indices are offset so that two
# datasets' image 0 do not share their noise.
DATASET_INDEX_STRIDE = 1 << 40


@dataclass
class PoolSource:
    name: str
    uri: str
    shape: tuple[int, int, int] | None
    """(H, W, C) of a pixels dataset's rows; None for an encoded dataset (files of any size)."""
    files: list[str]
    counts: np.ndarray | None
    channels: int = 0

    @property
    def encoded(self) -> bool:
        return self.shape is None


@dataclass
class PretrainingPlan:
    shape: tuple[int, int, int]
    """The main dataset's (H, W, C); for an encoded main dataset (S, S, C) at its evaluation size (its channels
    are what every row is converted to; a fixed-shape pool dataset keeps its own H x W, crops are taken from
    it as from any image)."""
    sources: list[PoolSource]
    epoch_images: int
    corruption: CorruptionConfig
    variable: bool = False
    """The main dataset is encoded: views are cropped from each original image (raysl.views.encoded), and
    rows reach the view maker one image at a time (`variable_rows`), not as one (N, H, W, C) array."""
    crop_fraction: float = 0.875
    """evaluation.crop_fraction: how an encoded pool dataset's images are brought to a fixed-shape main
    dataset's shape, the way they are evaluated."""

    @property
    def channels(self) -> int:
        return self.shape[2]

    @property
    def selective(self) -> bool:
        """True when rows need their index (and dataset) to be selected, repeated or corrupted."""
        return len(self.sources) > 1 or self.sources[0].counts is not None or self.corruption.active

    @property
    def mixes(self) -> bool:
        """True when rows must be shuffled across the whole epoch: a row repeated (a small subset with
        epoch_size full, a small pool dataset) or several datasets whose shards would fill batches alone."""
        return len(self.sources) > 1 or any(source.counts is not None and source.counts.max() > 1 for source in self.sources)

    @cached_property
    def _source_by_file(self) -> dict[str, int]:
        return {_bare(file): number for number, source in enumerate(self.sources) for file in source.files}

    def source_of(self, paths: np.ndarray) -> np.ndarray:
        """The dataset number of each row, from the shard path Ray Data read it from."""
        try:
            return np.array([self._source_by_file[_bare(str(path))] for path in paths], np.int64)
        except KeyError as error:
            raise RuntimeError(f"read a shard that belongs to no dataset of the pool: {error.args[0]} "
                               f"(known: {sorted(self._source_by_file)[:3]}...)") from None

    def condition(self, number: int, pixels: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Dataset `number`'s decoded rows (repeats included) in the main dataset's shape, corrupted per image."""
        return corrupt(to_shape(pixels, self.shape), indices + number * DATASET_INDEX_STRIDE, self.corruption)

    def _by_source(self, count: int, indices: np.ndarray, sources: np.ndarray | None):
        """Per dataset with rows in the batch: (its number, it, the batch rows, their row indices, their repeats)."""
        sources = np.zeros(count, np.int64) if sources is None else sources
        for number, source in enumerate(self.sources):
            rows = np.flatnonzero(sources == number)
            if rows.size == 0:
                continue
            index = np.asarray(indices)[rows]
            repeats = source.counts[index] if source.counts is not None else np.ones(rows.size, np.int64)
            yield number, source, rows, index, repeats

    def apply(self, images: list[bytes] | np.ndarray, indices: np.ndarray, sources: np.ndarray | None = None) -> np.ndarray:
        """Rows (raw pixel bytes, their row index, their dataset number) -> this epoch's pretraining images."""
        parts = []
        for number, source, rows, index, repeats in self._by_source(len(indices), indices, sources):
            keep = np.repeat(np.arange(rows.size), repeats)
            if keep.size == 0:
                continue
            unique = source_pixels(source, [images[row] for row in rows], self.shape, self.crop_fraction)
            parts.append(self.condition(number, unique[keep], index[keep]))
        if not parts:
            size = self.corruption.resize
            return np.empty((0, *(resized_shape(*self.shape[:2], size) if size else self.shape[:2]), self.shape[2]), np.uint8)
        return np.concatenate(parts)

    def variable_rows(self, images: list[bytes] | np.ndarray, indices: np.ndarray | None,
                      sources: np.ndarray | None = None) -> list[bytes | np.ndarray]:
        """Rows -> this epoch's pretraining images, one entry each (repeats included), for an encoded main
        dataset: an encoded row stays its file's bytes (decoded where its crops are taken, at reduced size
        when that pays) unless it is corrupted; a pixels row (a fixed-shape pool dataset) becomes uint8
        (H, W, C) in the main dataset's channels; a corrupted row is decoded and corrupted (fixed per image)."""
        if not self.selective:
            return list(images)
        from raysl.views.decode import decode_array

        out: list[bytes | np.ndarray] = []
        for number, source, rows, index, repeats in self._by_source(len(images), indices, sources):
            for row, row_index, times in zip(rows, index, repeats):
                if times == 0:
                    continue
                item = images[row]
                if not source.encoded or self.corruption.active:
                    pixels = (decode_array(item, self.channels) if source.encoded
                              else np.frombuffer(item, np.uint8).reshape(source.shape).copy())
                    if pixels.shape[2] != self.channels:
                        pixels = to_shape(pixels[None], (*pixels.shape[:2], self.channels))[0]
                    item = corrupt(pixels[None], np.array([row_index + number * DATASET_INDEX_STRIDE]), self.corruption)[0]
                out.extend([item] * int(times))
        return out


# What a failed read or decode can look like (Ray's RayTaskError(X) is also an X): only these send a run
# looking for a damaged shard. A dead actor or a bug in the view maker is not a damaged shard.
READ_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, EOFError, pa.ArrowException)


def guarded_batches(batches, plan: PretrainingPlan, on_damage=None, look: bool = True):
    """`batches`, but when making them fails with a read or decode error, look for a damaged shard among the
    plan's datasets (each shard's size and sha256 against the manifest, then the row group that fails to read):
    if one is found, `on_damage(record)` (e.g. record it so a retry stops at once) and raise DamagedShardError
    naming it and how to re-prepare; else the original error goes on. `look=False` (every rank but one, which
    all meet the same failure) skips the search and re-raises."""
    try:
        yield from batches
    except DamagedShardError:
        raise
    except READ_ERRORS as error:
        damage = damage_report(plan) if look else None
        if damage is None:
            raise
        if on_damage is not None:
            on_damage(damage)
        raise DamagedShardError(damage["message"]) from error


def damage_report(plan: PretrainingPlan) -> dict[str, str] | None:
    """The first damaged shard of the plan's datasets: {"uri", "shard", "message"}, or None when all are sound."""
    for source in plan.sources:
        found = find_damage(source.uri, read_manifest(source.uri))
        if found:
            return {"uri": source.uri, "shard": found[0], "message": found[1]}
    return None


def record_damage(marker: str, damage: dict[str, str]) -> None:
    write_text(marker, json.dumps(damage))


def recorded_damage(marker: str) -> str | None:
    """The message of a damaged shard recorded at `marker` by an earlier attempt, if that shard is still damaged;
    a shard since re-prepared or copied back (it now matches its manifest and reads) clears the record."""
    text = read_text(marker)
    if not text:
        return None
    try:
        damage = json.loads(text)
        still = shard_damage(damage["uri"], read_manifest(damage["uri"]), damage["shard"])
    except (ValueError, KeyError, TypeError):  # not a record this raysl wrote: let the run look again
        still = ""
    except UserError as error:  # the dataset itself is gone or unreadable now
        still = str(error)
    if not still:
        delete_file(marker)
        return None
    return still


def _bare(path: str) -> str:
    """A shard path without its URI scheme, as Ray Data's include_paths reports it."""
    return path.split("://", 1)[-1]


def decode_images(column: list[bytes] | np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Raw pixel bytes per row (the Parquet `image` column) as one uint8 array (N, H, W, C)."""
    return np.frombuffer(b"".join(column), dtype=np.uint8).reshape(len(column), *shape)


def source_pixels(source: PoolSource, column: list[bytes], shape: tuple[int, int, int], crop_fraction: float = 0.875) -> np.ndarray:
    """A fixed-shape main dataset's rows of one source as uint8 (N, H, W, C): a pixels source in its own shape
    (the plan's condition brings it to `shape`), an encoded one through the evaluation transform at `shape`
    (the same way it is evaluated)."""
    if not source.encoded:
        return decode_images(column, source.shape)
    from raysl.views.evaluation import eval_images

    return to_shape(eval_images(list(column), shape[0], source.channels, crop_fraction), shape)


def main_shape(run: RunConfig, manifest: dict) -> tuple[int, int, int]:
    """The shape every dataset of a run is brought to for evaluation (and fixed-shape pretraining): the main
    dataset's own, or for an encoded one (eval_size, eval_size, channels)."""
    if is_encoded(manifest):
        return (run.eval_size, run.eval_size, channels_of(manifest))
    return tuple(manifest["image_shape"])


def plan_pretraining(run: RunConfig, data_uri: str, pool_uris: list[str] | tuple[str, ...] = ()) -> PretrainingPlan:
    """Read the labels and sizes the plan needs (not the images) and fix what every epoch pretrains on."""
    manifest = read_manifest(data_uri)
    shape = main_shape(run, manifest)
    uris = [data_uri, *pool_uris]
    names = [run.data.label, *(entry.label for entry in run.data.pool)]
    manifests = [manifest, *(read_manifest(uri) for uri in pool_uris)]
    conditioned = bool(run.data.pool) or run.data.subset.count is not None or run.data.subset.fraction is not None
    if conditioned:
        labels = load_labels(data_uri, "train")
        counts = pretraining_counts(run, labels, [m["splits"]["train"]["count"] for m in manifests[1:]])
        epoch_images = int(sum(c.sum() for c in counts))
    else:
        counts = [None]
        total = manifest["splits"]["train"]["count"]
        epoch_images = min(total, run.data.train_limit) if run.data.train_limit else total
        if run.data.train_limit and run.data.train_limit < total:  # the first train_limit rows, each once
            counts = [(np.arange(total) < run.data.train_limit).astype(np.int32)]
    sources = [
        PoolSource(name, uri, None if is_encoded(m) else tuple(m["image_shape"]), split_files(uri, "train"), count,
                   channels_of(m))
        for name, uri, m, count in zip(names, uris, manifests, counts)
    ]
    return PretrainingPlan(shape, sources, epoch_images, run.data.corruption, variable=is_encoded(manifest),
                           crop_fraction=run.evaluation.crop_fraction)


def in_memory_epoch_images(plan: PretrainingPlan) -> np.ndarray:
    """Every image one epoch pretrains on (repeats included), in memory: for in-process training."""
    if plan.variable:
        raise ValueError("an encoded dataset's epoch is streamed (raysl.training.local), never held in memory")
    parts = []
    for number, source in enumerate(plan.sources):
        if source.encoded:  # a fixed-shape main dataset pooled with an encoded one
            manifest = read_manifest(source.uri)
            images = np.concatenate([source_pixels(source, table.column("image").to_pylist(), plan.shape, plan.crop_fraction)
                                     for table in split_tables(source.uri, manifest, "train", ["image"])])
        else:
            images, _ = load_split(source.uri, "train")
        rows = np.arange(len(images))
        if source.counts is not None:  # a subset, a pool share or train_limit; None: every row once
            rows = np.repeat(rows, source.counts)
        parts.append(plan.condition(number, images[rows], rows))
    return np.concatenate(parts)


SAMPLE_SIZE = 128  # an encoded dataset's sample grid: its first images through the evaluation transform at this size


def save_corruption_samples(data_uri: str, settings: list[CorruptionConfig], target: str, log=print, count: int = 8) -> None:
    """A PNG grid at `target` (local or URI): the first `count` train images clean, then under each distinct
    active corruption setting (one row each). Nothing when no setting corrupts. An encoded dataset's images are
    shown at SAMPLE_SIZE px (short side resized, centre crop); its runs corrupt each original before cropping."""
    distinct = {setting.model_dump_json(): setting for setting in settings if setting.active}
    if not distinct:
        return
    manifest = read_manifest(data_uri)
    if is_encoded(manifest):
        images, _ = load_eval_split(data_uri, manifest, "train", (SAMPLE_SIZE, SAMPLE_SIZE, channels_of(manifest)),
                                    limit=count, label_columns=["label"])
    else:
        images, _ = load_split(data_uri, "train", limit=count)
    rows = [("clean", CorruptionConfig())] + [(describe(setting), setting) for setting in distinct.values()]
    write_bytes(target, sample_grid_png(images, rows))
    log(f"corruption samples: {target}")
