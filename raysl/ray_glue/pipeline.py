"""The Ray Data pipeline of a run: the prepared shards read, the views made by long-lived augmentation actors
(or only decoded, with `views.where: trainer`), one execution streaming all of a run's epochs, split across
Train workers; Ray Data's context set for it.

Imports raysl.config, raysl.data, raysl.views and raysl.ray_glue.augment_actor.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.dataset
import ray
import ray.train
import ray.train.torch
import torch

from raysl.config import RunConfig, ViewsConfig
from raysl.data.pretraining import (
    READ_ERRORS,
    PretrainingPlan,
    damage_report,
    record_damage,
)
from raysl.ingest.dataset import mean_row_bytes, read_manifest
from raysl.ingest.shards import DamagedShardError
from raysl.ray_glue.augment_actor import AugmentViews, augment_batch
from raysl.views.batch import make_views


def configure_data_context(run: RunConfig | None = None) -> None:
    """Set the driver's DataContext (TorchTrainer copies it when constructed, so call this first).

    With resources.augment_on, every task and actor of the view dataset (reads, augmentation, Ray Data's
    own helpers) carries that label selector: they run on the augment-role nodes only.

    Ray 2.60's Parquet DataSourceV2 lists files in a separate task that always asks for 1 CPU and ignores
    read_parquet(num_cpus=...): with every other CPU reserved by trials (2 trials on 2 cores) that task
    never starts and the sweep hangs. The V1 reader lists on the driver and honours num_cpus.
    """
    context = ray.data.DataContext.get_current()
    context.use_datasource_v2 = False
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.execution_options.label_selector = dict(run.resources.augment_on) if run and run.resources.augment_on else None


def epochs_per_execution(run: RunConfig, plan: PretrainingPlan) -> int:
    """How many epochs one execution of the view dataset streams: all of them, unless the plan mixes.

    Ray Data starts a fresh actor pool (a process importing torch) and re-plans for every execution, and
    Train runs one execution per `iter_torch_batches` call: measured on 2 cores, that start-up was most of
    an epoch's cost for 60k small images (benchmarks/pipeline.py). One execution over every epoch pays it
    once, and the next epoch's views are made while rank 0 runs the kNN monitor. A plan that mixes (repeated
    rows, pooled datasets) needs a global shuffle per epoch, a barrier, so it keeps one execution per epoch.
    """
    return 1 if plan.mixes else run.epochs


def build_view_dataset(run: RunConfig, plan: PretrainingPlan, epochs: int = 1) -> ray.data.Dataset:
    """Parquet shards (of every pooled dataset) -> the plan's rows -> random views per batch of rows.

    `epochs` passes over the shards in one execution, each pass in its own random shard order (rows were
    shuffled within splits when prepared); a consumer takes an epoch's batches at a time from one iterator.
    Each execution re-runs it all with fresh views."""
    placement = {"label_selector": dict(run.resources.augment_on)} if run.resources.augment_on else {}
    files = [file for source in plan.sources for file in source.files]
    rng = np.random.default_rng()
    passes = [files[index] for _ in range(epochs) for index in rng.permutation(len(files))]
    dataset = ray.data.read_parquet(
        passes, columns=["image", "index"] if plan.selective else ["image"], include_paths=len(plan.sources) > 1,
        num_cpus=run.resources.data_cpus, batch_size=read_batch_rows(plan),
        fragment_scan_options=pyarrow.dataset.ParquetFragmentScanOptions(page_checksum_verification=True),
        **placement,
    )
    dataset = dataset.map_batches(
        AugmentViews,
        fn_constructor_kwargs={"views": run.views.model_dump(mode="json"), "plan": plan},
        batch_size=augment_batch(run.views, plan),
        batch_format="numpy",
        num_cpus=run.resources.data_cpus,
        compute=ray.data.ActorPoolStrategy(size=run.resources.data_actors),
        **placement,
    )
    if plan.mixes:
        # A repeated row's copies leave the actor together (a 1k subset of 60k, repeated to 60k, puts ~60
        # copies of each image in one block), and a pool's datasets arrive shard by shard: the local shuffle
        # buffer cannot spread that over the epoch, so every epoch's views are shuffled globally (a barrier:
        # the epoch's views are made before its first batch; small next to an epoch of training here).
        dataset = dataset.random_shuffle(num_cpus=run.resources.data_cpus, **placement)
    return dataset


def read_batch_rows(plan: PretrainingPlan) -> int:
    """Rows per pyarrow read batch: about Ray's target block size of stored rows, as Ray's own Parquet sampling
    would have estimated (raysl skips that sampling: raysl.ray_glue.data_patches), from the manifests' shard
    sizes (pixels datasets without them: their image shape)."""
    target = ray.data.DataContext.get_current().target_max_block_size or 128 * 2**20
    largest = 1.0
    for source in plan.sources:
        manifest = read_manifest(source.uri)
        size = mean_row_bytes(manifest) or (float(np.prod(manifest["image_shape"])) if manifest.get("image_shape") else 1.0)
        largest = max(largest, size)
    return max(1, int(target // largest))


def shuffle_buffer(batch_size: int, block_rows: int = 1024) -> int | None:
    """The consumer's local shuffle buffer for batches of `batch_size` rows: none while a batch is at most a
    quarter of an augmentation block of `block_rows` (the actor's row order already varies it), else 4 batches."""
    return None if 4 * batch_size <= block_rows else 4 * batch_size


def view_batches(shard, batch_size: int, views: ViewsConfig, device: torch.device, plan: PretrainingPlan):
    """This worker's batches of views (a list of uint8 (n, C, S, S) tensors on `device`).

    Blocks arrive in random shard order, their rows in a fresh random order the augmentation actor drew, so
    a batch of at most a quarter of a block holds different rows every epoch. A larger batch would hold
    mostly the same block's rows every epoch, so only then a local shuffle buffer mixes rows across blocks:
    it cost the consumer 3.5x the rest of the iteration (0.87 s against 0.24 s per 60k epoch, batches of 128,
    2 cores). Pinned host memory when the device is a GPU. With views.where: trainer the batches hold
    images, and the views are made here, on the device, by the same view maker the augmentation actors run."""
    buffer = shuffle_buffer(batch_size, augment_batch(views, plan))
    if plan.variable and views.where == "trainer":  # encoded files: decoded here (nvjpeg on a GPU)
        from raysl.views.gpu import views_on_device

        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy", drop_last=True,
                                        prefetch_batches=2, local_shuffle_buffer_size=buffer):
            yield views_on_device(batch["image"], views, generator, plan.channels, device)
        return
    batches = shard.iter_torch_batches(
        batch_size=batch_size, drop_last=True, prefetch_batches=2,
        local_shuffle_buffer_size=buffer, device=device, pin_memory=device.type == "cuda",
    )
    if views.where == "trainer":
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)  # fresh views per run and rank
        for batch in batches:
            yield make_views(batch["image"], views, generator)
        return
    for batch in batches:
        yield [batch[f"view_{index}"] for index in range(len(batch))]


def view_dataset_or_damage(run: RunConfig, plan: PretrainingPlan, marker: str) -> ray.data.Dataset:
    """build_view_dataset; when building it fails reading (Ray reads every shard's footer), the damaged shard
    named and recorded at `marker` (a retried trial stops at once)."""
    try:
        return build_view_dataset(run, plan, epochs_per_execution(run, plan))
    except READ_ERRORS:
        damage = damage_report(plan)
        if damage is None:
            raise
        record_damage(marker, damage)
        raise DamagedShardError(damage["message"]) from None


def datasets_to_split(workers: int) -> list[str] | str:
    """Ray Train's DataConfig.datasets_to_split for a run of `workers` Train workers.

    Several workers share the view dataset through streaming_split, whose SplitCoordinator actor runs the
    Ray Data executor and hands blocks out. A single worker needs no split: it gets the whole dataset's
    iterator and runs the executor itself, which saves the coordinator process (~380 MiB) and its
    per-block round trips (benchmarks/sweep_overhead.py counts its CPU)."""
    return "all" if workers > 1 else []
