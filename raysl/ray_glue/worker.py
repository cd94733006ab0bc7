"""What a Train worker (or a trial running its loop itself) runs: the one epoch loop of raysl.training.loop over
the Ray Data views, reports and checkpoints through a session, restore from the latest checkpoint, and the
markers (nonfinite.txt, damaged_shard.txt) that tell the driver a failure is not worth a retry.

Imports raysl.training, raysl.data and raysl.ray_glue.pipeline.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
import torch

from raysl.config import RunConfig
from raysl.data.pretraining import (
    PretrainingPlan,
    guarded_batches,
    record_damage,
    recorded_damage,
)
from raysl.ingest.dataset import channels_of, read_manifest
from raysl.ingest.shards import DamagedShardError
from raysl.io.storage import read_text, write_text
from raysl.ray_glue.pipeline import epochs_per_execution, view_batches
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
                view_batches(session.shard, run.batch_size // session.world_size, run.views, session.device, self.plan),
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


def storage_uri(filesystem, path: str) -> str:
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
        uri = storage_uri(checkpoint.filesystem, candidate.path)
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


def loop_config_of(run: RunConfig, data_uri: str, pool_uris, plan: PretrainingPlan, *, git_commit: str, label: str,
                   run_dir: str) -> dict[str, Any]:
    """train_loop's configuration: the run, its data and plan, and where its markers go (run_dir)."""
    return {
        "run": run.model_dump(mode="json"), "data_uri": data_uri, "pool_uris": list(pool_uris),
        "epoch_images": plan.epoch_images, "epochs_per_execution": epochs_per_execution(run, plan), "plan": plan,
        "git_commit": git_commit, "label": label, "run_dir": run_dir,
    }
