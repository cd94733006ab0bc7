"""A prepared dataset as its readers see it: the manifest, each split's shard files, labels and pixels, and the
facts readers plan with (storage, channels, row sizes, rows per shard).

Imports raysl.ingest.shards, raysl.io and raysl.errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.shards import read_table
from raysl.io.storage import join_uri, open_filesystem, read_path

KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder", "parquet", "webdataset")
ENCODED_KINDS = ("parquet", "webdataset")  # prepare-only sources: run configs cannot name them
MODES = ("auto", "encoded", "pixels")
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def read_manifest(uri: str) -> dict:
    """The manifest.json of a prepared dataset."""
    filesystem, path = open_filesystem(uri)
    if not has_manifest(filesystem, path):
        raise UserError(f"no prepared dataset at {uri} ({MANIFEST_NAME} missing); "
                        f"create it with `raysl prepare KIND [SRC] --out {uri}`")
    try:
        manifest = json.loads(read_path(filesystem, f"{path}/{MANIFEST_NAME}"))
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
    return [join_uri(uri, shard) for shard in split_entry(read_manifest(uri), uri, split)["shards"]]


def load_split(
    uri: str, split: str, limit: int | None = None, label_column: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split into memory: images uint8 (N, H, W, C), labels int64 (N,) (-1 where unlabeled)
    of `label_column`. With `limit`, only the first `limit` rows (and only the shards holding them) are read."""
    manifest = read_manifest(uri)
    if manifest.get("storage", "pixels") != "pixels":
        raise UserError(f"{uri} is an encoded dataset (variable-size image files, no fixed image_shape): "
                        "load_split reads fixed-shape pixel datasets only; decode with raysl.views.decode")
    shape = tuple(manifest["image_shape"])
    filesystem, path = open_filesystem(uri)
    images, labels, count = [], [], 0
    for shard in split_entry(manifest, uri, split)["shards"]:
        if limit is not None and count >= limit:
            break
        table = read_table(filesystem, f"{path}/{shard}", ["image", label_column], uri=uri, shard=shard,
                           manifest=manifest)
        if limit is not None:
            table = table.slice(0, limit - count)
        images.append(stored_pixels(table.column("image"), shape))
        labels.append(table.column(label_column).to_numpy().astype(np.int64))
        count += table.num_rows
    if not images:
        return np.empty((0, *shape), np.uint8), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def load_labels(uri: str, split: str, column: str = "label") -> np.ndarray:
    """One label column of a prepared split, int64 (N,), without reading the images (rows.split_labels)."""
    return split_labels(uri, read_manifest(uri), split, [column])[column]


def stored_pixels(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
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


def has_manifest(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(f"{path}/{MANIFEST_NAME}").type == pafs.FileType.File


def split_entry(manifest: dict, uri: str, split: str) -> dict:
    if split not in manifest["splits"]:
        raise UserError(f"{uri} has no {split!r} split (it has {', '.join(manifest['splits'])}); "
                        "an unlabeled image folder has only 'train'")
    return manifest["splits"][split]



def is_encoded(manifest: dict) -> bool:
    return manifest.get("storage") == "encoded"


def channels_of(manifest: dict) -> int:
    """1 (gray) or 3 (RGB): the model's input channels for this dataset."""
    return int(manifest.get("channels") or manifest["image_shape"][2])


def mean_row_bytes(manifest: dict, split: str = "train") -> float | None:
    """The mean stored bytes of a row of a split, from the manifest's shard entries (None without them)."""
    entries = [(manifest.get("files") or {}).get(shard) for shard in manifest["splits"][split]["shards"]]
    if not entries or any(entry is None for entry in entries):
        return None
    rows = sum(entry["rows"] for entry in entries)
    return sum(entry["bytes"] for entry in entries) / rows if rows else None


def split_tables(uri: str, manifest: dict, split: str, columns: list[str], limit: int | None = None) -> Iterator[pa.Table]:
    """The split's shards as Arrow tables of `columns`, in order; with `limit`, only the first `limit` rows."""
    filesystem, root = open_filesystem(uri)
    count = 0
    for shard in split_entry(manifest, uri, split)["shards"]:
        if limit is not None and count >= limit:
            return
        table = read_table(filesystem, f"{root}/{shard}", columns, uri=uri, shard=shard, manifest=manifest)
        if limit is not None:
            table = table.slice(0, limit - count)
        count += table.num_rows
        yield table


def shard_row_counts(uri: str, manifest: dict, split: str) -> list[tuple[str, int]]:
    """(shard, rows) of a split's shards in order: from the manifest's file entries, else each shard's footer."""
    shards = split_entry(manifest, uri, split)["shards"]
    files = manifest.get("files") or {}
    if all(shard in files for shard in shards):
        return [(shard, int(files[shard]["rows"])) for shard in shards]
    import pyarrow.parquet as pq

    filesystem, root = open_filesystem(uri)
    counts = []
    for shard in shards:
        with filesystem.open_input_file(f"{root}/{shard}") as handle:
            counts.append((shard, pq.ParquetFile(handle).metadata.num_rows))
    return counts


def split_labels(uri: str, manifest: dict, split: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """Label columns (int64) of every row of a split, in stored order, without reading the images."""
    parts: dict[str, list[np.ndarray]] = {column: [] for column in columns}
    for table in split_tables(uri, manifest, split, list(columns)):
        for column in columns:
            parts[column].append(table.column(column).to_numpy().astype(np.int64))
    return {column: np.concatenate(chunks) if chunks else np.empty(0, np.int64) for column, chunks in parts.items()}
