"""CIFAR-10 / CIFAR-100 python pickles to SourceData, unpickling numpy arrays only.

Imports raysl.ingest.source.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.source import SourceData, SplitData
from raysl.io.storage import is_file, join_uri, open_filesystem, read_path

CIFAR_LAYOUTS = {
    # kind: (extracted folder, train files, test files, meta file, archive URL)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses any other global, so a
    tampered pickle cannot run code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_source(kind: str, source: str) -> SourceData:
    """Read CIFAR-10 / CIFAR-100 python batches from `source` (the extracted folder or its parent).
    CIFAR-100 keeps fine labels as "label" and coarse labels as "label_coarse"."""
    folder, train_files, test_files, meta_file, url = CIFAR_LAYOUTS[kind]
    filesystem, path = open_filesystem(source)
    directory = next((d for d in (path, f"{path}/{folder}") if is_file(filesystem, f"{d}/{meta_file}")), None)
    if directory is None:
        expected = ", ".join([meta_file, *train_files, *test_files])
        raise UserError(
            f"{kind}: no python batches in {source} or {join_uri(source, folder)} (expected {expected}). "
            f"Download {url} and extract it there (`tar xzf {url.rsplit('/', 1)[1]}`), or rerun with --download"
        )
    meta = _load_pickle(filesystem, f"{directory}/{meta_file}")
    label_keys = {"label": "labels"} if kind == "cifar10" else {"label": "fine_labels", "label_coarse": "coarse_labels"}
    name_keys = {"label": "label_names"} if kind == "cifar10" else {"label": "fine_label_names",
                                                                       "label_coarse": "coarse_label_names"}
    label_sets = {column: [_text(name) for name in meta[key]] for column, key in name_keys.items()}
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        images, labels = [], {column: [] for column in label_keys}
        for file in files:
            batch = _load_pickle(filesystem, f"{directory}/{file}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise UserError(f"{directory}/{file}: data has shape {data.shape}, expected (N, 3072); "
                                "the batch is corrupt: download the archive again")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            for column, key in label_keys.items():
                labels[column].append(np.asarray(batch[key], dtype=np.int64))
        splits[split] = SplitData(np.ascontiguousarray(np.concatenate(images)),
                                  {column: np.concatenate(values) for column, values in labels.items()})
    return SourceData(splits, label_sets)


def _load_pickle(filesystem: pafs.FileSystem, path: str) -> dict:
    """A CIFAR pickle as a dict with str keys (the originals are Python 2 pickles with bytes keys)."""
    if not is_file(filesystem, path):
        raise UserError(f"missing {path}; extract the CIFAR archive again (or rerun with --download)")
    try:
        loaded = _NumpyOnlyUnpickler(io.BytesIO(read_path(filesystem, path)), encoding="bytes").load()
    except Exception as error:  # truncated or foreign pickles raise many types
        raise UserError(f"{path} is not a readable CIFAR pickle ({error}); extract the archive again") from error
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, expected a CIFAR batch dict; "
                        "extract the archive again")
    return {_text(key): value for key, value in loaded.items()}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
