"""Writing a fixed-shape (pixels) dataset: a source read once, its manifest built (class names, counts, channel
statistics), shards of at most ROWS_PER_SHARD rows / MAX_SHARD_BYTES written.

Imports the source readers of raysl.ingest, raysl.io and raysl.errors.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.errors import UserError
from raysl.ingest.cifar import read_cifar_source
from raysl.ingest.dataset import ENCODED_KINDS, FORMAT_VERSION, MANIFEST_NAME
from raysl.ingest.download import default_download_dir, download_source
from raysl.ingest.encoded import histogram_stats
from raysl.ingest.folder_pixels import read_image_folder
from raysl.ingest.idx import read_idx_source
from raysl.ingest.shards import describe_file
from raysl.ingest.source import SourceData, SplitData, resize_all
from raysl.io.storage import open_filesystem

DEFAULT_SOURCES = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # Debian package dataset-fashion-mnist
ROWS_PER_SHARD = 10_000
MAX_SHARD_BYTES = 512 * 2**20  # fewer rows per shard for large images


def resolve_source(kind: str, source: str | None, download: bool) -> str:
    """SRC, or the kind's default source, or (with --download) the download cache directory."""
    if kind in ("image-folder", *ENCODED_KINDS):
        if not source:
            what = "the folder holding the images (root/<class>/<image>)" if kind == "image-folder" else \
                f"the directory (or glob) of its {'.parquet' if kind == 'parquet' else '.tar'} files"
            raise UserError(f"{kind} needs SRC: {what}")
        if download:
            raise UserError(f"--download is not available for {kind}; pass the files as SRC")
        return source
    if source:
        return source
    if kind in DEFAULT_SOURCES:
        return DEFAULT_SOURCES[kind]
    if download:
        return default_download_dir(kind)
    raise UserError(f"{kind} needs SRC: the directory holding its raw files; "
                    f"or use --download to fetch them into {default_download_dir(kind)}")


def read_source(kind: str, source: str, download: bool, **options) -> tuple[str, SourceData]:
    """(where it was read from, the raw dataset); with `download`, fetch it first when missing or corrupt."""
    try:
        return source, _read_source_once(kind, source, **options)
    except UserError:
        if not download:
            raise
    if source == DEFAULT_SOURCES.get(kind):  # a system directory: download into the cache instead
        source = default_download_dir(kind)
    download_source(kind, source)
    return source, _read_source_once(kind, source, **options)


def _read_source_once(
    kind: str, source: str, *, image_size: int | None, test_fraction: float, seed: int, unlabeled: bool,
    strict: bool, workers: int | None, progress: bool, classes: str | None = None,
) -> SourceData:
    if kind == "image-folder":
        return read_image_folder(source, image_size=image_size, test_fraction=test_fraction, seed=seed,
                                 unlabeled=unlabeled, strict=strict, workers=workers, progress=progress,
                                 classes_file=classes)
    data = read_idx_source(kind, source) if kind in ("fashion-mnist", "mnist") else read_cifar_source(kind, source)
    if image_size is not None and data.splits["train"].images.shape[1:3] != (image_size, image_size):
        for split in data.splits.values():
            split.images = resize_all(split.images, image_size, workers=workers, progress=progress)
            data.converted += len(split.images)
    return data


def build_manifest(kind: str, source: str, data: SourceData) -> dict:
    class_names = data.label_sets["label"]
    train_images = data.splits["train"].images
    mean, std = _channel_stats(train_images)
    rows_per_shard = _rows_per_shard(train_images.shape[1:])
    splits = {}
    for name, split in data.splits.items():
        labels = split.labels["label"]
        counts = np.bincount(labels[labels >= 0], minlength=len(class_names)) if len(class_names) else []
        shard_count = max(1, -(-len(labels) // rows_per_shard))
        splits[name] = {
            "count": int(len(labels)),
            "class_counts": {class_name: int(count) for class_name, count in zip(class_names, counts)},
            "shards": [f"{name}/part-{index:05d}.parquet" for index in range(shard_count)],
        }
    height, width = (int(size) for size in train_images.shape[1:3])
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": str(source),
        "storage": "pixels",
        "image_shape": [int(size) for size in train_images.shape[1:]],
        "channels": int(train_images.shape[3]),
        "max_side": None,
        "quality": None,
        "sizes": {"width": [width] * 3, "height": [height] * 3},
        "class_names": list(class_names),
        "class_ids": {name: index for index, name in enumerate(class_names)},
        "split_folders": data.split_folders,
        "notes": list(data.notes),
        "label_sets": {column: list(names) for column, names in data.label_sets.items()},
        "splits": splits,
        "mean": mean,
        "std": std,
        "kept": sum(split["count"] for split in splits.values()),
        "converted": int(data.converted),
        "skipped": list(data.skipped),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels in 0..1, exact, from 256-bin histograms (no float copy)."""
    channels = images.shape[-1]
    histograms = np.zeros((channels, 256), np.int64)
    for start in range(0, len(images), ROWS_PER_SHARD):
        chunk = images[start:start + ROWS_PER_SHARD]
        for channel in range(channels):
            histograms[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
    return histogram_stats(histograms)


def _rows_per_shard(image_shape: tuple[int, ...]) -> int:
    return max(1, min(ROWS_PER_SHARD, MAX_SHARD_BYTES // int(np.prod(image_shape))))


def write_pixel_shards(out: str, data: SourceData, manifest: dict) -> None:
    """Replace any dataset at `out` with these shards, then write the manifest (last)."""
    filesystem, path = open_filesystem(out)
    reset_dataset_dir(filesystem, path)
    rows_per_shard = _rows_per_shard(manifest["image_shape"])
    files = {}
    for name, split in data.splits.items():
        filesystem.create_dir(f"{path}/{name}", recursive=True)
        for number, shard in enumerate(manifest["splits"][name]["shards"]):
            start = number * rows_per_shard
            pq.write_table(_shard_table(split, start, start + rows_per_shard), f"{path}/{shard}", filesystem=filesystem,
                           write_page_checksum=True)
            files[shard] = describe_file(filesystem, f"{path}/{shard}")
    manifest["files"] = files
    write_manifest(filesystem, path, manifest)


def reset_dataset_dir(filesystem: pafs.FileSystem, path: str) -> None:
    """Create `path` and remove a previous dataset there (its manifest first, then its split folders)."""
    filesystem.create_dir(path, recursive=True)
    for stale in (f"{path}/{MANIFEST_NAME}", *(f"{path}/{split}" for split in ("train", "test"))):
        info = filesystem.get_file_info(stale)
        if info.type == pafs.FileType.File:
            filesystem.delete_file(stale)
        elif info.type == pafs.FileType.Directory:
            filesystem.delete_dir(stale)


def write_manifest(filesystem: pafs.FileSystem, path: str, manifest: dict) -> None:
    with filesystem.open_output_stream(f"{path}/{MANIFEST_NAME}") as stream:
        stream.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))


def _shard_table(split: SplitData, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a split as an Arrow table; the image column shares the pixel buffer."""
    images = np.ascontiguousarray(split.images[start:stop])
    count, item_size = len(images), int(np.prod(images.shape[1:]))
    offsets = np.arange(count + 1, dtype=np.int32) * item_size
    image_column = pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(images)])
    columns = {"image": image_column, "label": pa.array(split.labels["label"][start:stop], pa.int64()),
               "index": pa.array(np.arange(start, start + count, dtype=np.int64))}
    for column, labels in split.labels.items():
        if column != "label":
            columns[column] = pa.array(labels[start:stop], pa.int64())
    return pa.table(columns)
