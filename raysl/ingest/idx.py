"""MNIST / Fashion-MNIST idx files (gzipped or not) to SourceData.

Imports raysl.ingest.source.
"""

from __future__ import annotations

import gzip
import zlib

import numpy as np
import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.source import FASHION_MNIST_CLASSES, MNIST_CLASSES, SourceData, SplitData
from raysl.io.storage import is_file, open_filesystem, read_path

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_source(kind: str, source: str) -> SourceData:
    """Read the four idx files (each plain or .gz) of MNIST or Fashion-MNIST from the directory `source`."""
    filesystem, directory = open_filesystem(source)
    found: dict[str, str | None] = {}
    for name in (name for pair in IDX_FILES.values() for name in pair):
        paths = (f"{directory}/{name}", f"{directory}/{name}.gz")
        found[name] = next((path for path in paths if is_file(filesystem, path)), None)
    missing = [name for name, path in found.items() if path is None]
    if missing:
        if kind == "fashion-mnist":
            how = ("On Debian/Ubuntu `apt-get install dataset-fashion-mnist` installs them in "
                   "/usr/share/datasets/fashion-mnist; or rerun with --download")
        else:
            how = "Rerun with --download, or fetch them from https://ossci-datasets.s3.amazonaws.com/mnist/"
        raise UserError(
            f"{kind}: missing {', '.join(missing)} (plain or .gz) in {source}. {how}; "
            "or pass the directory holding the four idx files as SRC"
        )
    splits = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = _read_idx(filesystem, found[images_name], ndim=3)
        labels = _read_idx(filesystem, found[labels_name], ndim=1).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{found[images_name]} has {len(images)} images but {found[labels_name]} has {len(labels)} "
                            "labels; the files do not belong together: replace them with a matching set")
        if len(labels) and labels.max() > 9:
            raise UserError(f"{found[labels_name]} has label {labels.max()}, expected 0..9: "
                            f"the file is not {kind} labels; download it again")
        splits[split] = SplitData(images[..., np.newaxis], {"label": labels})
    names = FASHION_MNIST_CLASSES if kind == "fashion-mnist" else MNIST_CLASSES
    return SourceData(splits, {"label": list(names)})


def _read_idx(filesystem: pafs.FileSystem, path: str, ndim: int) -> np.ndarray:
    """Parse one idx file of unsigned bytes with `ndim` dimensions (magic 0x0000 08 ndim, big-endian sizes)."""
    raw = read_path(filesystem, path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path} is a corrupt gzip file ({error}); download it again") from error
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise UserError(f"{path} is not an idx file of {ndim}-d unsigned bytes (bad magic number {raw[:4].hex()}); "
                        "download it again")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=header)
    if data.size != np.prod(shape):
        raise UserError(f"{path} holds {data.size} bytes of data but its header says {shape}: "
                        "the file is truncated or corrupt; download it again")
    return data.reshape(shape)
