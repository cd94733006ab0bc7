"""Embeddings of a prepared dataset by a pretrained backbone: the pure (no Ray) half of `raysl embed`
(raysl.ray_glue.embed runs it with Ray Data).

The images are brought to the backbone's input exactly as the kNN monitor brings its evaluation images
(raysl.data.eval_images.EvalImages): a pixels dataset at its own stored shape (to_shape), an encoded one by the
evaluation transform (raysl.views.evaluation.eval_images: short side to eval_size / crop_fraction, centre crop
eval_size, with the run's evaluation.image_size / crop_fraction), shaped by raysl.data.pretraining.main_shape.
The features are the monitor's own (raysl.training.monitor.extract_features): the source's recorded input
normalisation, eval mode, the backbone output L2-normalised, cast to float16 or float32 after normalising
(the monitor's evaluation.feature_dtype does the same). So a stored embedding is what the monitor scores.

A source is a `raysl export` directory (model.json + backbone.pt, a local path) or a checkpoint (a directory
holding state.pt, state.pt itself, a run directory: its newest checkpoint, or a sweep's experiment directory:
its best trial's newest), local or on object storage.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from raysl.data.eval_images import eval_rows
from raysl.errors import UserError

DTYPES = ("float16", "float32")
ARROW_TYPES = {"float16": pa.float16(), "float32": pa.float32()}
EMBEDDINGS_DIR = "embeddings"  # out/embeddings/*.parquet
SUMMARY_FILE = "embed.json"  # out/embed.json


@dataclass
class EmbedSource:
    """A backbone and how its inputs are made."""

    path: str  # as given
    resolved: str  # the export directory, or the checkpoint directory a run / sweep directory named
    kind: str  # "export" | "checkpoint"
    backbone: nn.Module
    channels: int
    mean: list[float]
    std: list[float]
    run: Any  # raysl.config.RunConfig: its eval_size, evaluation.crop_fraction, precision, channels_last
    knn: dict[str, Any] = field(default_factory=dict)  # knn_top1, knn_epoch (and the protocol, for an export)
    epoch: int | None = None

    @property
    def feature_dim(self) -> int:
        from raysl.training.evaluation import feature_width

        return feature_width(self.backbone)


def _loaded(path: str, state: dict | None = None):
    """raysl.training.checkpoint.load_backbone (or, given the checkpoint's loaded `state`, backbone_of_state), with a
    file it cannot read or weights that do not fit made a UserError naming `path`."""
    from raysl.training.checkpoint import backbone_of_state, load_backbone

    try:
        return load_backbone(path) if state is None else backbone_of_state(state, f"{path}/state.pt")
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001  (missing or damaged backbone.pt, weights that do not fit)
        first = str(error).splitlines()[0] if str(error) else ""
        raise UserError(f"{path}: its backbone cannot be loaded: {type(error).__name__}: {first}") from None


def open_source(path: str, log=print) -> EmbedSource:
    """The backbone of `path` (an export or a checkpoint) with its input normalisation and run config; a
    UserError naming `path` when it is neither, or cannot be loaded."""
    from raysl.io.storage import absolute_path, exists, is_remote
    from raysl.report.leaderboard import best_trial_run
    from raysl.training.checkpoint import (
        MODEL_FILE,
        STATE_FILE,
        checkpoint_input,
        find_checkpoint,
        load_checkpoint,
        recorded_run_config,
        run_config_of_checkpoint,
    )

    given = absolute_path(str(path).rstrip("/") or str(path))
    local = given if not is_remote(given) else ""
    if local and not os.path.exists(local):
        raise UserError(f"{given}: no such file or directory (give a `raysl export` directory or a checkpoint)")
    if local and os.path.isfile(os.path.join(local, MODEL_FILE)):
        where = os.path.join(local, MODEL_FILE)
        try:
            document = json.loads(open(where, encoding="utf-8").read())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(f"{where} cannot be read: {error}; export the checkpoint again") from None
        inputs = document.get("input") if isinstance(document, dict) else None
        if not isinstance(inputs, dict) or not {"channels", "mean", "std", "size"} <= set(inputs):
            raise UserError(f"{where} is not a raysl export's model.json (no input channels / mean / std / size)")
        if not os.path.isfile(os.path.join(local, STATE_FILE)):
            raise UserError(f"{given}: {STATE_FILE} missing next to model.json; export the checkpoint again")
        run = recorded_run_config(document.get("config"), where)
        backbone = _loaded(local)
        knn = {key: document.get(key) for key in ("knn_top1", "knn_epoch", "knn_protocol")}
        return EmbedSource(str(path), local, "export", backbone, int(inputs["channels"]), list(inputs["mean"]),
                           list(inputs["std"]), run, knn, document.get("epoch"))
    if not local and exists(f"{given}/{MODEL_FILE}"):
        raise UserError(f"{given}: export directories are read from a local path; copy it here first")
    run_directory = best_trial_run(given, log)  # a sweep's experiment directory: its best trial's
    try:
        directory = find_checkpoint(run_directory)
    except UserError:
        raise UserError(f"{given}: neither a raysl export ({MODEL_FILE} + {STATE_FILE}) nor a checkpoint "
                        f"(state.pt, or checkpoint_* directories holding one)") from None
    where = f"{directory}/state.pt"
    state = load_checkpoint(directory)
    run = run_config_of_checkpoint(state, where)
    inputs = checkpoint_input(state, run, where)
    backbone = _loaded(directory, state)
    monitored = state.get("monitored") or {}
    knn = {"knn_top1": monitored.get("knn_top1"),
           "knn_epoch": int(monitored["knn_epoch"]) if monitored.get("knn_epoch") is not None else None}
    return EmbedSource(str(path), directory, "checkpoint", backbone, int(inputs["channels"]), list(inputs["mean"]),
                       list(inputs["std"]), run, knn, int(state.get("epoch", 0)))


def chosen_splits(manifest: dict, data: str, split: str) -> list[str]:
    """`split`: all (every split the dataset has), one split's name, or names separated by commas."""
    have = list(manifest["splits"])
    if split == "all":
        return have
    names = [name.strip() for name in str(split).split(",") if name.strip()]
    unknown = [name for name in names if name not in have]
    if not names or unknown:
        raise UserError(f"--split {split}: {data} has no {unknown[0] if unknown else 'such'} split "
                        f"(it has {', '.join(have)}; or give all)")
    return list(dict.fromkeys(names))


def label_columns(manifest: dict) -> list[str]:
    """The stored label columns (label; CIFAR-100 also label_coarse) when the dataset is labelled, else none."""
    if not manifest.get("class_names"):
        return []
    sets = manifest.get("label_sets") or {"label": manifest["class_names"]}
    return [column for column, names in sets.items() if names]


def input_shape(source: EmbedSource, manifest: dict, data: str) -> tuple[int, int, int]:
    """(H, W, C) the dataset's images are brought to (the monitor's main_shape), after checking the channels
    and that the backbone takes a batch of that shape (on the driver, before any Ray work)."""
    from raysl.data.pretraining import main_shape
    from raysl.ingest.dataset import channels_of
    from raysl.training.monitor import extract_features

    channels = channels_of(manifest)
    if channels != source.channels:
        raise UserError(f"{data} holds {channels}-channel images but {source.path}'s backbone takes {source.channels} "
                        f"channel{'s' if source.channels != 1 else ''}; embed a dataset of the kind it was trained on")
    if len(source.mean) != channels or len(source.std) != channels:
        raise UserError(f"{source.path}: its recorded normalisation has {len(source.mean)} channels, its backbone {channels}")
    shape = tuple(int(size) for size in main_shape(source.run, manifest))
    try:
        extract_features(source.backbone, torch.zeros((2, *shape), dtype=torch.uint8), torch.tensor(source.mean),
                         torch.tensor(source.std), batch_size=2)
    except Exception as error:  # noqa: BLE001  (an input too small for the stem, ...)
        first = str(error).splitlines()[0] if str(error) else ""
        raise UserError(f"{source.path}'s backbone cannot take {data}'s images at {shape[0]}x{shape[1]}x{shape[2]}: "
                        f"{type(error).__name__}: {first}") from None
    return shape


def split_of_shards(manifest: dict, splits: Sequence[str]) -> dict[str, str]:
    """{shard (relative, e.g. train/part-00000.parquet): its split} of the chosen splits."""
    return {shard: name for name in splits for shard in manifest["splits"][name]["shards"]}


def splits_of_paths(paths: Sequence[str], shards: dict[str, str]) -> np.ndarray:
    """The split of each row from the shard path Ray Data read it from (any scheme or root: matched by suffix)."""
    unique, inverse = np.unique(np.asarray(paths, dtype=object).astype(str), return_inverse=True)
    names = []
    for path in unique:
        found = [split for shard, split in shards.items() if path == shard or path.endswith("/" + shard)]
        if not found:
            raise ValueError(f"row from {path}, which is none of the dataset's shards")
        names.append(found[0])
    return np.asarray(names, dtype=object)[inverse]


def decode_rows(table: pa.Table, *, manifest: dict, shape: Sequence[int], crop_fraction: float,
                shards: dict[str, str], labels: Sequence[str]) -> dict[str, np.ndarray]:
    """A batch of stored rows (image, index, path, label columns) -> images uint8 (N, H, W, C), index, split
    and the label columns."""
    out = {
        "images": eval_rows(table.column("image"), manifest, shape, crop_fraction),
        "index": table.column("index").to_numpy().astype(np.int64),
        "split": splits_of_paths(table.column("path").to_pylist(), shards),
    }
    for column in labels:
        out[column] = table.column(column).to_numpy().astype(np.int64)
    return out


def embedding_type(dim: int, dtype: str) -> pa.DataType:
    """The embedding column's Arrow type: fixed_size_list<float16 | float32>[dim] (pandas reads each row as a
    numpy array; np.stack(column) gives (N, dim))."""
    return pa.list_(ARROW_TYPES[dtype], dim)


class Embedder:
    """Decoded rows -> embeddings (the monitor's features): a callable on numpy batches {images, index, split,
    label columns} returning an Arrow table {index, split, label columns, embedding}."""

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], *, dtype: str = "float16",
                 batch_size: int = 256, device: str | torch.device = "cpu", autocast: str | None = None,
                 channels_last: bool = False, labels: Sequence[str] = ()):
        self.device = torch.device(device)
        self.backbone = backbone.to(self.device).eval()
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=self.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=self.device)
        self.dtype, self.batch_size, self.labels = dtype, batch_size, list(labels)
        self.autocast = getattr(torch, autocast) if autocast else None
        self.channels_last = channels_last

    def features(self, images: np.ndarray) -> np.ndarray:
        from raysl.training.monitor import extract_features

        with torch.no_grad():
            features = extract_features(
                self.backbone, torch.from_numpy(np.ascontiguousarray(images)), self.mean, self.std, self.batch_size,
                self.device, self.autocast, self.channels_last, dtype=getattr(torch, self.dtype),
            )
        return features.numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        features = self.features(batch["images"])
        count, dim = features.shape
        columns = {"index": pa.array(np.asarray(batch["index"], np.int64)),
                   "split": pa.array([str(name) for name in batch["split"]], pa.string())}
        for column in self.labels:
            columns[column] = pa.array(np.asarray(batch[column], np.int64))
        flat = pa.array(np.ascontiguousarray(features).reshape(-1), ARROW_TYPES[self.dtype])
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim) if count else pa.array([], embedding_type(dim, self.dtype))
        return pa.table(columns)
