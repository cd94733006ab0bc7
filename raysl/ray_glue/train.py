"""Ray Data + Ray Train glue: the view dataset, the per-worker loop, and the TorchTrainer that runs it.

Everything Ray-specific about one pretraining run lives here; the loop itself is raysl.training.loop (run_epochs,
which `raysl train --local` runs too, with RayEpochs here saying what differs).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.dataset
import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch

from raysl.config import RunConfig, ViewsConfig
from raysl.ray_glue.augment_actor import AugmentViews, augment_batch
from raysl.ingest.dataset import read_manifest
from raysl.data.pretraining import (
    READ_ERRORS, PretrainingPlan, damage_report, guarded_batches, plan_pretraining, record_damage, recorded_damage,
)
from raysl.ingest.dataset import channels_of, mean_row_bytes
from raysl.ingest.shards import DamagedShardError
from raysl.views.batch import make_views
from raysl.io.storage import read_text, write_text
from raysl.training.evaluation import load_eval_sets
from raysl.training.loop import CheckpointError, EpochSession, NonFiniteLossError, Trainer, epoch_line, run_epochs

# Written next to a run's checkpoints when its loss went non-finite: a restarted run (Train's or Tune's
# retry) stops at once with the same message instead of training into the same NaN again.
NONFINITE_MARKER = "nonfinite.txt"
# Written there when a read failed on a damaged shard: retries would read the same bytes, so a restarted
# run stops at once with the message that names the shard.
DAMAGED_MARKER = "damaged_shard.txt"


def raise_recorded_failure(run_dir: str, *, naming_marker: bool = False) -> None:
    """Raise what an earlier attempt of the run at `run_dir` recorded, so a retry stops at once: its non-finite loss
    (NonFiniteLossError), or a damaged shard that is still damaged (DamagedShardError); nothing when neither.
    `naming_marker`: the message also says where it was recorded and that it is not retried."""
    marker = f"{run_dir}/{NONFINITE_MARKER}"
    if earlier := read_text(marker):
        raise NonFiniteLossError(f"{earlier} (recorded in {marker}; not retried)" if naming_marker else earlier) from None
    marker = f"{run_dir}/{DAMAGED_MARKER}"
    if earlier := recorded_damage(marker):
        raise DamagedShardError(f"{earlier} (recorded in {marker}; not retried)" if naming_marker else earlier) from None


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


def _view_batches(shard, batch_size: int, views: ViewsConfig, device: torch.device, plan: PretrainingPlan):
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


@dataclass
class LoopSession:
    """What the training loop needs from whoever runs it: a Ray Train worker (train_loop_per_worker) or a Tune
    trial running the loop itself (raysl.ray_glue.in_trial): its rank, device, latest checkpoint, the view
    batches' iterator, and where reports (metrics, checkpoint directory) go."""

    rank: int
    world_size: int
    device: torch.device
    checkpoint: Any  # a ray.train / ray.tune Checkpoint, or None
    shard: Any  # a Ray Data DataIterator over the view dataset
    report: Callable[[dict[str, Any], Any], None]
    checkpoint_type: Any = ray.train.Checkpoint
    wrap_model: Callable[[torch.nn.Module], torch.nn.Module] | None = None


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """What each Train worker runs: train_loop with Ray Train's context (its rank, device, checkpoint and
    dataset shard; reports through ray.train.report)."""
    context = ray.train.get_context()
    world_size = context.get_world_size()
    train_loop(loop_config, LoopSession(
        rank=context.get_world_rank(), world_size=world_size, device=ray.train.torch.get_device(),
        checkpoint=ray.train.get_checkpoint(), shard=ray.train.get_dataset_shard("train"),
        report=lambda metrics, checkpoint: ray.train.report(metrics, checkpoint=checkpoint),
        wrap_model=(lambda module: ray.train.torch.prepare_model(module, move_to_device=False)) if world_size > 1 else None,
    ))


def train_loop(loop_config: dict[str, Any], session: LoopSession) -> None:
    """Build the Trainer, resume from the latest checkpoint, then run the epochs (raysl.training.loop.run_epochs):
    per epoch train on this worker's batches, evaluate (every rank its share), and report metrics with a checkpoint
    (rank 0 writes it)."""
    run = RunConfig.model_validate(loop_config["run"])
    data_uri, pool_uris = loop_config["data_uri"], loop_config.get("pool_uris", [])
    rank = session.rank
    torch.set_num_threads(run.resources.torch_threads or max(1, math.ceil(run.resources.cpus_per_worker)))
    manifest = read_manifest(data_uri)
    steps_per_epoch = loop_config["epoch_images"] // run.batch_size
    trainer = Trainer(
        run,
        in_channels=channels_of(manifest),
        mean=manifest["mean"],
        std=manifest["std"],
        steps_per_epoch=steps_per_epoch,
        device=session.device,
        wrap_model=session.wrap_model,
        git_commit=loop_config.get("git_commit", "unknown"),
    )
    label = loop_config.get("label", "run")
    raise_recorded_failure(loop_config["run_dir"], naming_marker=True)
    damaged_marker = f"{loop_config['run_dir']}/{DAMAGED_MARKER}"
    checkpoint = session.checkpoint
    resumed_from = None
    if checkpoint:
        restore(trainer, checkpoint, log=(lambda text: print(f"[{label}] {text}", flush=True)) if rank == 0 else (lambda text: None))
        trainer.follow_config()  # PBT's exploit: the donor's state with this trial's values
        resumed_from = checkpoint.path.rstrip("/").rsplit("/", 2)[-2]  # the run (trial) whose checkpoint it was
    started_at = trainer.epoch
    plan: PretrainingPlan = loop_config["plan"]
    try:  # labels only; every rank computes the features of its share of the images at each evaluation
        eval_sets = load_eval_sets(run, data_uri, pool_uris)
    except DamagedShardError as error:  # the labels are read from the train split's shards first; the read named it
        record_shard_damage(damaged_marker, error)
        raise
    # Every report says which epoch this attempt started from: > 0 after a restart from a checkpoint, so a
    # resume shows in Tune's results and the run's result, not only in worker logs.
    tags = {"resumed_at_epoch": started_at, **({"resumed_from": resumed_from} if resumed_from is not None else {})}
    run_epochs(trainer, eval_sets, RayEpochs(session, run, plan, loop_config["run_dir"], label, tags,
                                             per_execution=loop_config.get("epochs_per_execution", 1)))


class RayEpochs(EpochSession):
    """The epoch loop on a Ray Train worker or in a Tune trial: batches from the worker's Ray Data shard (one
    execution per epoch, or one over several: loop_config's epochs_per_execution), the NaN and damaged-shard markers
    a retry reads, rank 0's epoch line, and every rank's report with rank 0's checkpoint (a temporary directory Ray
    copies into its storage)."""

    def __init__(self, session: LoopSession, run: RunConfig, plan: PretrainingPlan, run_dir: str, label: str,
                 tags: dict[str, Any], *, per_execution: int = 1):
        self.session, self.run, self.plan, self.label, self.started = session, run, plan, label, tags
        self.per_execution = per_execution
        self.marker, self.damaged_marker = f"{run_dir}/{NONFINITE_MARKER}", f"{run_dir}/{DAMAGED_MARKER}"
        self.writes = session.rank == 0
        self.execution = None

    def batches(self):
        if self.execution is None or self.per_execution == 1:
            session, run = self.session, self.run
            self.execution = guarded_batches(  # the next execution; rank 0 looks for a damaged shard when reads fail
                _view_batches(session.shard, run.batch_size // session.world_size, run.views, session.device, self.plan),
                self.plan, on_damage=lambda damage: record_damage(self.damaged_marker, damage), look=session.rank == 0)
        return self.execution

    def tags(self) -> dict[str, Any]:
        return dict(self.started)

    def nonfinite(self, error: NonFiniteLossError) -> None:
        write_text(self.marker, str(error))

    def damaged(self, error: DamagedShardError) -> None:
        record_shard_damage(self.damaged_marker, error)

    def monitored(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.session.rank == 0:
            print(f"[{self.label}] {epoch_line(trainer, metrics)}", flush=True)

    def checkpoint_directory(self):
        return tempfile.TemporaryDirectory()

    def save(self, trainer: Trainer, directory: str, metrics: dict[str, Any]) -> None:
        saving = time.perf_counter()
        trainer.save(directory)
        metrics["checkpoint_seconds"] = time.perf_counter() - saving  # writing it; the upload is report's

    def report(self, trainer: Trainer, metrics: dict[str, Any], directory: str | None) -> None:
        self.session.report(metrics, self.session.checkpoint_type.from_directory(directory) if directory else None)

    def log(self, text: str) -> None:
        print(f"[{self.label}] {text}", flush=True)


def record_shard_damage(marker: str, error: DamagedShardError) -> None:
    """Record the damaged shard `error` names (when it names one) at `marker`: a retried run stops at once."""
    if error.uri:
        record_damage(marker, {"uri": error.uri, "shard": error.shard, "message": str(error)})


def run_directory(storage_path: str, name: str) -> str:
    """Where Ray Train keeps a run's checkpoints (and raysl its nonfinite.txt): storage_path/name."""
    return f"{storage_path.rstrip('/')}/{name}"


def failure_summary(error: BaseException) -> str:
    """The user-facing cause of a failed Train run: each failed rank's last error line, not Ray's frames."""
    failures = getattr(error, "worker_failures", None) or {}
    causes = failures.items() if failures else [(None, getattr(error, "controller_failure", error))]
    lines = []
    for rank, failure in sorted(causes, key=lambda item: -1 if item[0] is None else item[0]):
        text = [line.strip() for line in str(failure).strip().splitlines() if line.strip()]
        last = text[-1] if text else type(failure).__name__
        lines.append(f"rank {rank}: {last}" if rank is not None else last)
    return "; ".join(dict.fromkeys(lines))


def _storage_uri(filesystem, path: str) -> str:
    scheme = getattr(filesystem, "type_name", "local")
    return path if scheme == "local" else f"{scheme}://{path}"


def restore(trainer: Trainer, checkpoint, log) -> None:
    """Resume from the run's latest checkpoint; if that one cannot be loaded (truncated, corrupt), from
    the newest earlier one that can, saying which. Raises CheckpointError naming every file tried."""
    parent, latest = checkpoint.path.rstrip("/").rsplit("/", 1)
    infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent, recursive=False))
    earlier = sorted(
        (info.base_name for info in infos
         if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_") and info.base_name < latest),
        reverse=True,
    )
    failures, names = [], [latest, *earlier]
    for index, name in enumerate(names):
        candidate = type(checkpoint)(f"{parent}/{name}", filesystem=checkpoint.filesystem)
        uri = _storage_uri(checkpoint.filesystem, candidate.path)
        try:
            with candidate.as_directory() as directory:
                trainer.load(directory, name=uri)
        except CheckpointError as error:
            failures.append(str(error))
            if index + 1 < len(names):
                log(f"{error}; trying the previous checkpoint, {names[index + 1]}")
            continue
        log(f"resumed from {uri} at epoch {trainer.epoch}" + (f" (fell back past {len(failures)} unreadable)" if failures else ""))
        return
    raise CheckpointError("no checkpoint of this run can be loaded:\n  " + "\n  ".join(failures))


def build_trainer(
    run: RunConfig,
    data_uri: str,
    *,
    storage_path: str,
    name: str,
    git_commit: str,
    callbacks: list | None = None,
    label: str = "run",
    pool_uris: list[str] | tuple[str, ...] = (),
) -> ray.train.torch.TorchTrainer:
    resources = run.resources
    plan = plan_pretraining(run, data_uri, pool_uris)
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.torch.TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config_of(run, data_uri, pool_uris, plan, git_commit=git_commit, label=label,
                                         run_dir=run_directory(storage_path, name)),
        scaling_config=ray.train.ScalingConfig(
            num_workers=resources.workers, use_gpu=use_gpu, resources_per_worker=per_worker,
            label_selector=dict(resources.train_on) if resources.train_on else None,
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks or [],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=run.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=run.max_failures),
        ),
        datasets={"train": view_dataset_or_damage(run, plan, f"{run_directory(storage_path, name)}/{DAMAGED_MARKER}")},
        dataset_config=ray.train.DataConfig(datasets_to_split=datasets_to_split(resources.workers)),
    )


def loop_config_of(run: RunConfig, data_uri: str, pool_uris, plan: PretrainingPlan, *, git_commit: str, label: str,
                   run_dir: str) -> dict[str, Any]:
    """train_loop's configuration: the run, its data and plan, and where its markers go (run_dir)."""
    return {
        "run": run.model_dump(mode="json"), "data_uri": data_uri, "pool_uris": list(pool_uris),
        "epoch_images": plan.epoch_images, "epochs_per_execution": epochs_per_execution(run, plan), "plan": plan,
        "git_commit": git_commit, "label": label, "run_dir": run_dir,
    }


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
