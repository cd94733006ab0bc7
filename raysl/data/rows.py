"""A prepared split's rows, whatever its storage: fixed-shape pixels (`storage: pixels`, idx / CIFAR /
`--image-size` folders) or encoded files of any size (`storage: encoded`). Reads go shard by shard through
raysl.data.shards, so memory is bounded by a shard and a damaged shard names itself.

Evaluation images of an encoded dataset are made by the standard evaluation transform (raysl.data.decode.
eval_images: the short side resized to size / crop_fraction, then a centre crop of size x size; 224 from 256
at the default 0.875), so the kNN monitor, the probe and `raysl eval` see one fixed shape either way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa

from raysl.data.conditions import to_shape
from raysl.data.shards import read_table
from raysl.data.sources import open_filesystem


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
    from raysl.data.prepare import _split_entry

    filesystem, root = open_filesystem(uri)
    count = 0
    for shard in _split_entry(manifest, uri, split)["shards"]:
        if limit is not None and count >= limit:
            return
        table = read_table(filesystem, f"{root}/{shard}", columns, uri=uri, shard=shard, manifest=manifest)
        if limit is not None:
            table = table.slice(0, limit - count)
        count += table.num_rows
        yield table


def eval_pixels(column: Sequence[bytes], shape: Sequence[int], channels: int, crop_fraction: float) -> np.ndarray:
    """An encoded dataset's rows (stored with `channels`) as evaluation images in `shape` (H, W, C): the
    evaluation transform at H (square), then brought to C channels (and to W when H != W) by to_shape."""
    from raysl.data.decode import eval_images

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
