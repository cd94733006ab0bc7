"""`raysl prepare`: turn a raw dataset into Parquet shards + manifest.json, and read them back.

Layout under OUT (a local path or a pyarrow filesystem URI such as s3://, gs://, file://):

    manifest.json
    train/part-00000.parquet, part-00001.parquet, ...   (about 10,000 rows each)
    test/part-00000.parquet, ...                        (absent for unlabeled image folders)

Columns: `image` (binary: raw uint8 pixels, H x W x C in C order, one shape per dataset), `label` (int64,
-1 when unlabeled), `index` (int64, row number within the split); CIFAR-100 adds `label_coarse`.
manifest.json is written last, so a directory without it is never a finished dataset.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.data.download import default_download_dir, download_source
from raysl.data.sources import (
    SourceData, SplitData, join_uri, open_filesystem, read_bytes, read_cifar_source, read_idx_source,
    read_image_folder, resize_all,
)
from raysl.errors import UserError

KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder")
DEFAULT_SOURCES = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # Debian package dataset-fashion-mnist
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROWS_PER_SHARD = 10_000
MAX_SHARD_BYTES = 512 * 2**20  # fewer rows per shard for large images


def prepare(
    kind: str, source: str | None, out: str, *, image_size: int | None = None, test_fraction: float = 0.1,
    seed: int = 0, strict: bool = False, download: bool = False, workers: int | None = None,
    progress: bool = True, unlabeled: bool = False,
) -> dict:
    """Write Parquet shards + manifest.json under `out` (local path or pyarrow filesystem URI).

    Everything is read and checked before anything is written; a previous dataset at `out` is replaced.
    `test_fraction`, `seed`, `unlabeled` and `strict` (any skipped file is an error) concern image folders,
    the only source that can skip files; see `read_image_folder` for how images are converted.
    Returns the manifest dict and prints one summary line.
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    source = _resolve_source(kind, source, download)
    source, data = _read_source(kind, source, download, image_size=image_size, test_fraction=test_fraction,
                                seed=seed, unlabeled=unlabeled, strict=strict, workers=workers, progress=progress)
    kept = sum(len(split.images) for split in data.splits.values())
    if kept == 0:
        raise UserError(f"{kind}: no images found in {source}; nothing was written. Check SRC")
    manifest = _build_manifest(kind, source, data)
    _write(out, data, manifest)
    print(f"prepared {kind}: kept {kept} (converted {data.converted}), skipped {len(data.skipped)} -> {out}")
    return manifest


def read_manifest(uri: str) -> dict:
    """The manifest.json of a prepared dataset."""
    filesystem, path = open_filesystem(uri)
    if not _has_manifest(filesystem, path):
        raise UserError(f"no prepared dataset at {uri} ({MANIFEST_NAME} missing); "
                        f"create it with `raysl prepare KIND [SRC] --out {uri}`")
    try:
        manifest = json.loads(read_bytes(filesystem, f"{path}/{MANIFEST_NAME}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{join_uri(uri, MANIFEST_NAME)} is not valid JSON ({error}); prepare the dataset again"
        ) from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{join_uri(uri, MANIFEST_NAME)} has format_version {manifest.get('format_version')!r}, "
                        f"this raysl reads {FORMAT_VERSION}; prepare the dataset again with this version")
    return manifest


def split_files(uri: str, split: str) -> list[str]:
    """The Parquet shard paths/URIs of a split (what Ray Data's read_parquet will be given)."""
    return [join_uri(uri, shard) for shard in _split_entry(read_manifest(uri), uri, split)["shards"]]


def load_split(
    uri: str, split: str, limit: int | None = None, label_column: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split into memory: images uint8 (N, H, W, C), labels int64 (N,) (-1 where unlabeled)
    of `label_column`. With `limit`, only the first `limit` rows (and only the shards holding them) are read."""
    manifest = read_manifest(uri)
    shape = tuple(manifest["image_shape"])
    filesystem, path = open_filesystem(uri)
    images, labels, count = [], [], 0
    for shard in _split_entry(manifest, uri, split)["shards"]:
        if limit is not None and count >= limit:
            break
        table = pq.read_table(f"{path}/{shard}", columns=["image", label_column], filesystem=filesystem)
        if limit is not None:
            table = table.slice(0, limit - count)
        images.append(_pixels(table.column("image"), shape))
        labels.append(table.column(label_column).to_numpy().astype(np.int64))
        count += table.num_rows
    if not images:
        return np.empty((0, *shape), np.uint8), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def load_labels(uri: str, split: str, column: str = "label") -> np.ndarray:
    """One label column of a prepared split, int64 (N,), without reading the images."""
    manifest = read_manifest(uri)
    filesystem, path = open_filesystem(uri)
    shards = _split_entry(manifest, uri, split)["shards"]
    columns = [pq.read_table(f"{path}/{shard}", columns=[column], filesystem=filesystem).column(column) for shard in shards]
    return np.concatenate([c.to_numpy().astype(np.int64) for c in columns]) if columns else np.empty(0, np.int64)


def ensure_prepared(
    kind: str, source: str | None, cache_dir: str, *, image_size: int | None = None,
    log: Callable[[str], object] = print,
) -> str:
    """Return the URI of a prepared copy of a known KIND under cache_dir, preparing it on first use.

    The copy lives at `<cache_dir>/<kind>[-<size>]` (image folders add a hash of SRC) and is reused
    whenever its manifest exists. On a local cache_dir it is prepared into a temporary sibling and
    renamed into place, so a killed prepare never leaves a half dataset that looks done; on object
    stores (no atomic rename) it is prepared in place, where the manifest, written last, marks it done.
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "image-folder" and not source:
        raise UserError("image-folder needs SRC: the folder holding the images")
    name = kind if image_size is None else f"{kind}-{image_size}"
    if kind == "image-folder":
        name += "-" + hashlib.sha1(str(source).encode()).hexdigest()[:8]
    target = join_uri(cache_dir, name)
    filesystem, target_path = open_filesystem(target)
    if _has_manifest(filesystem, target_path):
        return target
    log(f"preparing {kind} from {source or DEFAULT_SOURCES.get(kind, 'its default source')} into {target} (first use)")
    if not isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.delete_dir_contents(target_path, missing_dir_ok=True)
        prepare(kind, source, target, image_size=image_size)
        return target
    temporary = join_uri(cache_dir, f".{name}.partial-{uuid.uuid4().hex[:12]}")
    _, temporary_path = open_filesystem(temporary)
    try:
        prepare(kind, source, temporary, image_size=image_size)
        if not _has_manifest(filesystem, target_path):  # else another process finished first: keep its copy
            if filesystem.get_file_info(target_path).type != pafs.FileType.NotFound:
                filesystem.delete_dir(target_path)  # a half-written leftover
            filesystem.move(temporary_path, target_path)
    except OSError:
        if not _has_manifest(filesystem, target_path):  # not a lost race with another process
            raise
    finally:
        if filesystem.get_file_info(temporary_path).type != pafs.FileType.NotFound:
            filesystem.delete_dir(temporary_path)
    log(f"dataset ready at {target}")
    return target


# ---------------------------------------------------------------------------------------------- reading


def _resolve_source(kind: str, source: str | None, download: bool) -> str:
    """SRC, or the kind's default source, or (with --download) the download cache directory."""
    if kind == "image-folder":
        if not source:
            raise UserError("image-folder needs SRC: the folder holding the images (root/<class>/<image>)")
        if download:
            raise UserError("--download is not available for image-folder; pass the folder of images as SRC")
        return source
    if source:
        return source
    if kind in DEFAULT_SOURCES:
        return DEFAULT_SOURCES[kind]
    if download:
        return default_download_dir(kind)
    raise UserError(f"{kind} needs SRC: the directory holding its raw files; "
                    f"or use --download to fetch them into {default_download_dir(kind)}")


def _read_source(kind: str, source: str, download: bool, **options) -> tuple[str, SourceData]:
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
    strict: bool, workers: int | None, progress: bool,
) -> SourceData:
    if kind == "image-folder":
        return read_image_folder(source, image_size=image_size, test_fraction=test_fraction, seed=seed,
                                 unlabeled=unlabeled, strict=strict, workers=workers, progress=progress)
    data = read_idx_source(kind, source) if kind in ("fashion-mnist", "mnist") else read_cifar_source(kind, source)
    if image_size is not None and data.splits["train"].images.shape[1:3] != (image_size, image_size):
        for split in data.splits.values():
            split.images = resize_all(split.images, image_size, workers=workers, progress=progress)
            data.converted += len(split.images)
    return data


# ---------------------------------------------------------------------------------------------- writing


def _build_manifest(kind: str, source: str, data: SourceData) -> dict:
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
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": str(source),
        "image_shape": [int(size) for size in train_images.shape[1:]],
        "class_names": list(class_names),
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
    values = np.arange(256) / 255.0
    totals = np.maximum(histograms.sum(axis=1), 1)
    mean = histograms @ values / totals
    variance = histograms @ values**2 / totals - mean**2
    return [float(m) for m in mean], [float(s) for s in np.sqrt(np.maximum(variance, 0.0))]


def _rows_per_shard(image_shape: tuple[int, ...]) -> int:
    return max(1, min(ROWS_PER_SHARD, MAX_SHARD_BYTES // int(np.prod(image_shape))))


def _write(out: str, data: SourceData, manifest: dict) -> None:
    """Replace any dataset at `out` with these shards, then write the manifest (last)."""
    filesystem, path = open_filesystem(out)
    filesystem.create_dir(path, recursive=True)
    for stale in (f"{path}/{MANIFEST_NAME}", *(f"{path}/{split}" for split in ("train", "test"))):
        info = filesystem.get_file_info(stale)
        if info.type == pafs.FileType.File:
            filesystem.delete_file(stale)
        elif info.type == pafs.FileType.Directory:
            filesystem.delete_dir(stale)
    rows_per_shard = _rows_per_shard(manifest["image_shape"])
    for name, split in data.splits.items():
        filesystem.create_dir(f"{path}/{name}", recursive=True)
        for number, shard in enumerate(manifest["splits"][name]["shards"]):
            start = number * rows_per_shard
            pq.write_table(_shard_table(split, start, start + rows_per_shard), f"{path}/{shard}", filesystem=filesystem)
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


def _pixels(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A binary column of equal-size images as uint8 (N, *shape), without a per-row Python loop."""
    images = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        if data.size != len(chunk) * int(np.prod(shape)):
            raise UserError(f"a shard's images do not match image_shape {list(shape)}; prepare the dataset again")
        images.append(data.reshape(len(chunk), *shape))
    return np.concatenate(images) if images else np.empty((0, *shape), np.uint8)


def _has_manifest(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(f"{path}/{MANIFEST_NAME}").type == pafs.FileType.File


def _split_entry(manifest: dict, uri: str, split: str) -> dict:
    if split not in manifest["splits"]:
        raise UserError(f"{uri} has no {split!r} split (it has {', '.join(manifest['splits'])}); "
                        "an unlabeled image folder has only 'train'")
    return manifest["splits"][split]
