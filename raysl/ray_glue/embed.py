"""`raysl embed`: a pretrained backbone's embeddings of a prepared dataset, computed by Ray Data, to Parquet.

    embed(source: str, data: str, out: str, *, split: str = "all", dtype: str = "float16", batch_size: int = 256,
          actors: int | None = None, use_gpu: bool = False, log=print) -> dict

CLI: `raysl embed SOURCE DATA --out URI [--split all|NAME[,NAME]] [--dtype float16|float32] [--batch-size N]
[--actors N] [--gpu]` (raysl/cli.py), and raysl.embed (raysl/api.py).

What it does: every row of the chosen splits is brought to the backbone's input as the kNN monitor brings its
evaluation images and embedded by the monitor's feature function (raysl.outputs.embedding: L2-normalised backbone
output, eval mode, the source's recorded normalisation), so an embedding is exactly the feature the monitor
scores. Everything a user can get wrong (source, data, split, dtype, channels, an input the backbone cannot
take, a non-empty out) is a UserError before Ray starts; a damaged shard found during the run is a
DamagedShardError (a UserError) naming it; an error raised as a UserError inside a Ray task comes out as
that UserError, without Ray's frames.

Pipeline: read_parquet (the chosen splits' shards, V1 reader: configure_data_context) -> decode tasks
(map_batches, pyarrow batches: the evaluation images, uint8) -> an ActorPoolStrategy pool of inference actors
(each holds the backbone, put in the object store once; num_gpus=1 each with use_gpu, else 1 CPU and 1 torch
thread) -> write_parquet(out/embeddings), in stored order (preserve_order). Ray: used as it is when
initialised (left running); else an embedded local Ray, or RAY_ADDRESS's cluster, started here and shut down
at the end. On a multi-node cluster `out` (and `data`) must be reachable by every node: object storage or a
shared filesystem.

Output under `out`:
- `embeddings/*.parquet` (Ray's file names), rows in stored order, split by split, one row per image:
  `index` int64 (the dataset's stored row index within its split), `split` string, the stored label columns
  when the dataset is labelled (manifest class_names non-empty): `label` int64 (-1: unlabelled row; CIFAR-100 also
  `label_coarse`), `embedding` fixed_size_list<halffloat | float>[feature_dim] (pyarrow / pandas: one numpy
  array per row; `np.stack(df.embedding)` gives (N, feature_dim)). Read with `pandas.read_parquet(out/embeddings)`
  or `pyarrow.parquet.read_table`, `ray.data.read_parquet`.
- `embed.json`: source, resolved checkpoint / export, data, splits, rows per split, feature_dim, dtype, the input
  shape / normalisation / crop fraction, the source's kNN top-1 (and epoch), seconds. Returned as a dict too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset
import ray
import torch

from raysl.errors import UserError
from raysl.outputs.embedding import (
    DTYPES,
    EMBEDDINGS_DIR,
    SUMMARY_FILE,
    Embedder,
    chosen_splits,
    decode_rows,
    input_shape,
    label_columns,
    open_source,
    split_of_shards,
)
from raysl.ray_glue.session import cluster_nodes, ray_session

FILE_BYTES = 64 * 2**20  # about this much embedding data per output file (Ray's min_bytes_per_file)


# A UserError raised in a Ray task reaches the driver only as text (Ray Data wraps it in UserCodeException, whose
# cause does not travel): marked there, found here, raised again as a UserError with its own message.
_MARK = ("[[raysl-user-error]]", "[[/raysl-user-error]]")


def _marked(error: UserError) -> UserError:
    return UserError(f"{_MARK[0]}{error}{_MARK[1]}")


def _user_error_in(error: BaseException) -> str | None:
    """The message of a UserError a Ray task or actor raised (marked by _marked), carried by Ray's `error`."""
    import re

    pattern = re.compile(re.escape(_MARK[0]) + "(.*?)" + re.escape(_MARK[1]), re.DOTALL)
    seen, pending = set(), [error]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        found = pattern.search(str(current))
        if found:
            return found.group(1)
        pending += [getattr(current, "cause", None), current.__cause__, current.__context__]
    return None


class _EmbedActor:
    """An inference actor: the backbone (from the object store) on its device, Embedder per batch."""

    def __init__(self, backbone_ref, *, threads: int, **options):
        from raysl.ray_glue import data_patches

        data_patches.install()
        torch.set_num_threads(max(1, threads))
        backbone = ray.get(backbone_ref[0])  # wrapped in a list: Ray passes a nested ObjectRef unresolved
        device = "cuda" if options.pop("use_gpu") else "cpu"
        self.embedder = Embedder(backbone, device=device, **options)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        try:
            return self.embedder(batch)
        except UserError as error:
            raise _marked(error) from None


def _decode(table: pa.Table, **options) -> dict[str, np.ndarray]:
    """Stored rows -> evaluation images (a Ray Data task)."""
    try:
        return decode_rows(table, **options)
    except UserError as error:
        raise _marked(error) from None


def _check_out(out: str) -> None:
    import pyarrow.fs as pafs

    from raysl.io.storage import list_dirs, list_files, open_filesystem

    filesystem, path = open_filesystem(out)
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.File:
        raise UserError(f"--out {out} is a file; give a directory (absent or empty)")
    if list_files(out) or list_dirs(out):
        raise UserError(f"--out {out} is not empty; give a new directory (or delete its contents)")


def _pool_size(actors: int | None, use_gpu: bool) -> int:
    if actors is not None:
        return actors
    resources = ray.cluster_resources()
    if use_gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise UserError("--gpu: the Ray cluster has no GPU now (give --actors N to wait for N GPU actors, "
                            "e.g. on an autoscaling cluster)")
        return gpus
    return max(1, int(resources.get("CPU", 1)) // 2)  # the other half reads and decodes


def _rows_written(directory: str) -> dict[str, int]:
    """Rows per split of the files written (their split column only)."""
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    from raysl.io.storage import open_filesystem

    filesystem, path = open_filesystem(directory)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:  # nothing written: no rows
        return {}
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet")
    counts = dataset.to_table(columns=["split"]).column("split").value_counts()
    return {str(item["values"]): int(item["counts"]) for item in counts.to_pylist()}


def embed(source: str, data: str, out: str, *, split: str = "all", dtype: str = "float16", batch_size: int = 256,
          actors: int | None = None, use_gpu: bool = False, log=print) -> dict[str, Any]:
    """Embed `split` of the prepared dataset `data` with the backbone of `source` (an export or a checkpoint)
    into `out` (see the module docstring); returns a summary dict: rows written per split, feature_dim, out
    path, seconds (also written to out/embed.json)."""
    from raysl.ingest.dataset import is_encoded, mean_row_bytes, read_manifest, split_files
    from raysl.io.storage import absolute_path, delete_dir, join_uri, write_text
    from raysl.training.loop import autocast_dtype

    started = time.perf_counter()
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose from {', '.join(DTYPES)}")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: give at least 1")
    if actors is not None and actors < 1:
        raise UserError(f"--actors {actors}: give at least 1")
    data, out = absolute_path(data), absolute_path(out)
    manifest = read_manifest(data)
    splits = chosen_splits(manifest, data, split)
    embedded = open_source(source, log)
    shape = input_shape(embedded, manifest, data)
    _check_out(out)
    if use_gpu and not os.environ.get("RAY_ADDRESS") and not ray.is_initialized() and not torch.cuda.is_available():
        raise UserError("--gpu: this machine has no CUDA GPU (set RAY_ADDRESS to use a cluster's)")
    labels = label_columns(manifest)
    files = [file for name in splits for file in split_files(data, name)]
    expected = {name: int(manifest["splits"][name]["count"]) for name in splits}
    crop_fraction = embedded.run.evaluation.crop_fraction
    feature_dim = embedded.feature_dim
    target = join_uri(out, EMBEDDINGS_DIR)

    with ray_session(log=log):  # started here unless Ray runs, then shut down
        context = ray.data.DataContext.get_current()
        saved = (context.use_datasource_v2, context.enable_progress_bars, context.print_on_execution_start,
                 context.execution_options.label_selector, context.execution_options.preserve_order)
        try:
            from raysl.ray_glue import data_patches
            from raysl.ray_glue.pipeline import configure_data_context

            data_patches.install()  # no Parquet sampling retries: a damaged shard fails once (see data_patches)
            configure_data_context()
            context.enable_progress_bars = sys.stderr.isatty()
            if not context.enable_progress_bars:  # off a terminal on purpose: not Ray's "to enable, set ..." warning
                from ray.util.debug import log_once

                log_once("ray_data_progress_manager_disabled")  # the key Ray Data logs that warning under, once
            context.execution_options.preserve_order = True  # output in stored order
            size = _pool_size(actors, use_gpu)
            nodes = [node for node in cluster_nodes() if node.cpus]
            local = [name for name, uri in (("DATA", data), ("--out", out)) if "://" not in uri]
            if len(nodes) > 1 and local:
                log(f"note: {' and '.join(local)} {'is a local path' if len(local) == 1 else 'are local paths'} and Ray has "
                    f"{len(nodes)} nodes: every node must see {'it' if len(local) == 1 else 'them'} (a shared filesystem), "
                    "else use s3:// or gs://")
            autocast = autocast_dtype(embedded.run, torch.device("cuda" if use_gpu else "cpu"))  # the monitor's
            log(f"embedding {sum(expected.values())} rows of {data} ({', '.join(f'{name} {count}' for name, count in expected.items())}) "
                f"with {embedded.resolved} ({embedded.kind}, {feature_dim}-d {dtype}, input {'x'.join(map(str, shape))}) "
                f"on {size} {'GPU' if use_gpu else 'CPU'} actor{'s' if size != 1 else ''} -> {target}")
            row_bytes = max(mean_row_bytes(manifest, name) or float(np.prod(shape)) for name in splits)
            read_rows = max(1, int((context.target_max_block_size or 128 * 2**20) // max(row_bytes, 1.0)))
            dataset = ray.data.read_parquet(
                files, columns=["image", "index", *labels], include_paths=True, batch_size=read_rows,
                fragment_scan_options=pyarrow.dataset.ParquetFragmentScanOptions(page_checksum_verification=True),
            )
            dataset = dataset.map_batches(
                _decode, batch_size=batch_size, batch_format="pyarrow", zero_copy_batch=True,
                fn_kwargs={"manifest": manifest, "shape": shape, "crop_fraction": crop_fraction,
                           "shards": split_of_shards(manifest, splits), "labels": labels},
            )
            backbone_ref = ray.put(embedded.backbone)
            dataset = dataset.map_batches(
                _EmbedActor, batch_size=batch_size, batch_format="numpy",
                fn_constructor_args=([backbone_ref],),
                fn_constructor_kwargs={
                    "threads": 1, "use_gpu": use_gpu, "mean": embedded.mean, "std": embedded.std, "dtype": dtype,
                    "batch_size": batch_size, "labels": labels, "channels_last": embedded.run.channels_last,
                    "autocast": str(autocast).removeprefix("torch.") if autocast is not None else None,
                },
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=1, num_gpus=1 if use_gpu else 0,
            )
            per_row = feature_dim * (2 if dtype == "float16" else 4)
            try:
                dataset.write_parquet(target, min_bytes_per_file=max(per_row, FILE_BYTES))
            except Exception as error:  # noqa: BLE001  (Ray's wrapping of a failure in a task or actor)
                delete_dir(target, quiet=True)  # out was empty: what is there now is this run's, and incomplete
                message = _user_error_in(error)
                if message is not None:
                    raise UserError(message) from None
                from raysl.ingest.shards import DamagedShardError, find_damage

                found = find_damage(data, manifest, splits=tuple(splits))
                if found:
                    raise DamagedShardError(found[1], uri=data, shard=found[0]) from None
                raise
            written = _rows_written(target)
        finally:
            (context.use_datasource_v2, context.enable_progress_bars, context.print_on_execution_start,
             context.execution_options.label_selector, context.execution_options.preserve_order) = saved
    rows = {name: written.get(name, 0) for name in splits}
    if rows != expected:  # e.g. workers on other nodes wrote a local --out to their own disks
        raise UserError(f"embed wrote {rows} rows to {target} as this machine sees it, but {data} holds {expected}: "
                        "on a multi-node cluster --out must be object storage (s3://, gs://) or a shared filesystem")
    seconds = time.perf_counter() - started
    summary = {
        "source": embedded.path, "resolved": embedded.resolved, "source_kind": embedded.kind, "epoch": embedded.epoch,
        "data": data, "out": out, "embeddings": target, "splits": rows, "rows": sum(rows.values()),
        "feature_dim": feature_dim, "dtype": dtype, "normalised": "L2 (the kNN monitor's features)",
        "columns": ["index", "split", *labels, "embedding"],
        "input": {"shape": list(shape), "channels": embedded.channels, "mean": embedded.mean, "std": embedded.std,
                  "storage": "encoded" if is_encoded(manifest) else "pixels",
                  "crop_fraction": crop_fraction if is_encoded(manifest) else None},
        **{key: value for key, value in embedded.knn.items() if value is not None},
        "device": "gpu" if use_gpu else "cpu", "actors": size, "seconds": round(seconds, 3),
    }
    write_text(join_uri(out, SUMMARY_FILE), json.dumps(summary, indent=2) + "\n")
    log(f"wrote {summary['rows']} embeddings ({', '.join(f'{name} {count}' for name, count in rows.items())}) in "
        f"{seconds:.1f}s ({summary['rows'] / max(seconds, 1e-9):.0f} rows/s) -> {target}")
    return summary
