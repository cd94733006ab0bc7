"""The training loop: epochs of steps, the kNN monitor, checkpoint state. Knows nothing of Ray.

The Ray glue (raysl/ray_glue/worker.py) feeds it batches from a Ray Data shard and reports what it
returns; `raysl train --local` and the tests feed it batches made in-process. Both go through `Trainer`,
and both run their epochs through `run_epochs`, each with its own `EpochSession` (what differs between them).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysl.config import RunConfig
from raysl.ingest.shards import DamagedShardError
from raysl.io.storage import write_text
from raysl.methods import build_method
from raysl.methods.distributed import rank_and_world_size
from raysl.training.checkpoint import initialise_from
from raysl.training.evaluation import (
    EvalSet,
    FeatureOptions,
    eval_document,
    flat_metrics,
    full_evaluation,
    monitor_metrics,
)
from raysl.training.monitor import embedding_std
from raysl.views.batch import normalize

COLLAPSE_SAMPLE = 1024  # query features the collapse signal (embedding_std) is measured on
from raysl.training.optim import build_optimizer, build_scheduler

CHECKPOINT_FILE = "state.pt"
EVAL_FILE = "eval.json"  # the full evaluation's results, inside the checkpoint directory they score


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN / inf loss; the run stops and no checkpoint of that epoch is written."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, or not a raysl checkpoint)."""


def autocast_dtype(run: RunConfig, device: torch.device) -> torch.dtype | None:
    if run.precision == "bf16" or (run.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


class Trainer:
    """A method, its optimiser, schedule and grad scaler, and how many epochs are done."""

    def __init__(
        self,
        run: RunConfig,
        in_channels: int,
        mean: list[float],
        std: list[float],
        steps_per_epoch: int,
        device: torch.device | str = "cpu",
        wrap_model=None,
        git_commit: str = "unknown",
    ):
        if steps_per_epoch < 1:
            raise ValueError("steps_per_epoch must be at least 1 (is the dataset smaller than one batch?)")
        self.run = run
        self.in_channels = in_channels
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device)
        self.steps_per_epoch = steps_per_epoch
        self.git_commit = git_commit
        rank, _ = rank_and_world_size()
        torch.manual_seed(run.seed)  # the same initial weights on every rank
        self.method = build_method(run, in_channels)
        if run.init_from:  # weights only; a resumed run's checkpoint (load) replaces them
            initialise_from(self.method, run.init_from)
        self.method = self.method.to(self.device)
        if run.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if run.compile:
            self.method.backbone.compile()  # nn.Module.compile: in place, state_dict keys unchanged
        # The module the optimiser steps (DDP-wrapped when distributed); self.method stays unwrapped.
        self.model: nn.Module = wrap_model(self.method) if wrap_model else self.method
        torch.manual_seed(run.seed + 1000 * rank + 1)
        self.optimizer = build_optimizer(self.method, run.optimizer, run.batch_size)
        self.scheduler = build_scheduler(self.optimizer, run.schedule, steps_per_epoch, run.epochs)
        self.autocast_dtype = autocast_dtype(run, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=False)  # bf16 / fp32 need no scaling
        self.epoch = 0  # epochs completed
        self.step = 0
        self.monitored: dict[str, float] = {}  # the last kNN monitor's figures (evaluation.every > 1 carries them)

    # ------------------------------------------------------------------ training
    def train_epoch(self, batches: Iterable[list[torch.Tensor]]) -> dict[str, float]:
        """One epoch over uint8 view batches (each a list of (n, C, S, S) tensors); at most steps_per_epoch.
        Also times how long the loop waited for the next batch (data_wait_seconds): the input pipeline's cost
        to training, the rest of train_seconds being compute (loss.item() syncs an accelerator every step)."""
        self.model.train()
        started = time.perf_counter()
        loss_sum, images, steps, waited = 0.0, 0, 0, 0.0
        term_sums: dict[str, torch.Tensor] = {}  # a method's loss terms (LoGo's l_gg, l_lg, ...), this rank's
        iterator = iter(batches)
        while steps < self.steps_per_epoch:
            asked = time.perf_counter()
            views = next(iterator, None)
            waited += time.perf_counter() - asked
            if views is None:
                break
            inputs = [
                normalize(view.to(self.device, non_blocking=True), self.mean, self.std, self.run.channels_last)
                for view in views
            ]
            with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
                loss = self.model(inputs)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLossError(
                    f"loss became {loss_value} at epoch {self.epoch + 1}, step {steps + 1}; the run stops here and "
                    f"no checkpoint of this epoch is written. Try a lower optimizer.lr (now {self.run.optimizer.lr}, "
                    f"running at {self.run.optimizer.scaled_lr(self.run.batch_size):g} after lr_scaling) "
                    f"or a longer schedule.warmup_epochs."
                )
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.method.after_step(self.step, self.steps_per_epoch * self.run.epochs)
            loss_sum += loss_value
            for name, value in getattr(self.method, "last_terms", {}).items():
                term_sums[name] = term_sums[name] + value if name in term_sums else value
            images += views[0].shape[0]
            steps += 1
        if steps == 0:
            raise RuntimeError("the epoch had no batches: the data shard is smaller than one batch")
        seconds = time.perf_counter() - started
        self.epoch += 1
        _, world_size = rank_and_world_size()
        mean_loss = torch.tensor(loss_sum / steps, dtype=torch.float64, device=self.device)
        if world_size > 1:  # the mean over ranks is the loss of the global batch
            torch.distributed.all_reduce(mean_loss)
            mean_loss /= world_size
        return {
            "epoch": self.epoch,
            "loss": mean_loss.item(),
            "lr": self.optimizer.param_groups[0]["lr"],
            "images_per_s": images * world_size / seconds,
            "train_seconds": seconds,
            "data_wait_seconds": waited,
            "data_wait_fraction": waited / seconds,
            **{name: total.item() / steps for name, total in term_sums.items()},
        }

    # ------------------------------------------------------------------ evaluation
    def feature_options(self) -> FeatureOptions:
        return FeatureOptions(
            self.mean, self.std, self.run.evaluation.feature_batch(self.device.type), self.device, self.autocast_dtype,
            self.run.channels_last, getattr(torch, self.run.evaluation.feature_dtype),
        )

    def evaluate(self, sets: list[EvalSet]) -> dict[str, float]:
        """kNN top-1 (bank: clean train images, queries: test images) per evaluation set and label set
        (`knn_top1` is the main dataset's first), and the collapse signal. With a process group, every rank
        calls it (each computes its share of the features)."""
        started = time.perf_counter()
        metrics, queries = monitor_metrics(self.method.backbone, sets, self.run.evaluation, self.feature_options())
        with torch.no_grad():
            self.method.projector.eval()
            projected = self.method.projector(queries[:COLLAPSE_SAMPLE].to(self.device, torch.float32))
            self.method.projector.train()
        return {
            **metrics,
            "embedding_std": embedding_std(projected),
            "embedding_dim": projected.shape[1],
            "eval_seconds": time.perf_counter() - started,
        }

    def monitors_this_epoch(self) -> bool:
        """Whether the kNN monitor runs after the epoch just completed: every evaluation.every epochs and the last."""
        return self.epoch % self.run.evaluation.every == 0 or self.epoch >= self.run.epochs

    def monitor(self, sets: list[EvalSet]) -> dict[str, float]:
        """The monitor's figures for the epoch just completed: measured (monitors_this_epoch) or the last measured
        ones carried (NaN before the first), with knn_epoch saying which epoch they are from (0: none yet)."""
        if self.monitors_this_epoch():
            self.monitored = {**self.evaluate(sets), "knn_epoch": self.epoch}
            return dict(self.monitored)
        carried = {key: value for key, value in self.monitored.items() if key != "eval_seconds"}
        return {"knn_top1": math.nan, "knn_epoch": 0, **carried, "eval_seconds": 0.0}

    def full_evaluation(self, sets: list[EvalSet], log=None) -> list[dict[str, Any]]:
        """kNN top-1 / top-5 and the linear probe per evaluation set, label set and labeled budget."""
        return full_evaluation(self.method.backbone, sets, self.run.evaluation, self.feature_options(), log=log)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        for name, tensor in self.method.state_dict().items():
            if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                raise NonFiniteLossError(f"weight {name} is not finite; refusing to write a checkpoint")
        return {
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "monitored": {key: float(value) for key, value in self.monitored.items()},
            # what an exported backbone's input must be: raysl export writes it into model.json
            "input": {"channels": self.in_channels, "mean": self.mean.tolist(), "std": self.std.tolist()},
            "config": self.run.model_dump(mode="json"),
            "git_commit": self.git_commit,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.method.load_state_dict(state["method"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.monitored = dict(state.get("monitored", {}))
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])

    def follow_config(self) -> None:
        """After loading a checkpoint, take this run's learning rate and weight decay (the schedule's position
        stays the checkpoint's): a no-op when resuming the same run; after PBT's exploit (a better trial's state,
        this trial's perturbed values) they change from the next step. The method's own values (temperature,
        momentum, lambda) are attributes built from the config, not loaded."""
        lr = self.run.optimizer.scaled_lr(self.run.batch_size)
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        self.scheduler.base_lrs = [lr] * len(self.optimizer.param_groups)
        for group in self.optimizer.param_groups:
            group.update(initial_lr=lr, lr=lr * factor, weight_decay=self.run.optimizer.weight_decay)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CHECKPOINT_FILE
        torch.save(self.state_dict(), path)
        return path

    def load(self, directory: str | Path, name: str | None = None) -> None:
        """Restore from a checkpoint directory; `name` (where it came from) is what errors call it.

        weights_only=True: tensors and plain containers only, so a checkpoint found in a shared bucket
        cannot run code when it is loaded (a pickled object is refused, not executed).
        """
        path = Path(directory) / CHECKPOINT_FILE
        name = f"{name.rstrip('/')}/{CHECKPOINT_FILE}" if name else str(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            self.load_state_dict(state)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {name}: no such file") from None
        except Exception as error:  # truncated zip, bad pickle, refused global, wrong keys or shapes
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(f"checkpoint {name} cannot be loaded: {type(error).__name__}: {first_line}") from None


# ---------------------------------------------------------------------- the epoch loop
class EpochSession:
    """What the epoch loop (run_epochs) needs from whoever runs it, and the steps where they differ:
    `raysl train --local` (raysl.training.local: batches made here, checkpoints in the run directory) and a Ray
    Train worker or a Tune trial (raysl.ray_glue.worker: batches from Ray Data, markers a retry reads, checkpoints
    reported to Ray). The defaults do nothing; `batches`, `checkpoint_directory` and `report` are the runner's."""

    writes: bool = True
    """Whether this process writes the checkpoint and eval.json (with several ranks: rank 0 only)."""
    eval_checkpoint: str | None = None
    """What eval.json names as the checkpoint it scores (None: the checkpoint directory is a temporary one)."""

    def batches(self) -> Iterable[list[torch.Tensor]]:
        """The next epoch's view batches (train_epoch takes steps_per_epoch of them and leaves the rest, so an
        iterator over several epochs may be handed out again)."""
        raise NotImplementedError

    def tags(self) -> dict[str, Any]:
        """Metrics added to every epoch's after training's own (before the monitor's)."""
        return {}

    def nonfinite(self, error: NonFiniteLossError) -> None:
        """The loss went non-finite (the error is raised once this returns)."""

    def damaged(self, error: DamagedShardError) -> None:
        """The kNN monitor met a damaged shard (the error is raised once this returns)."""

    def monitored(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        """The epoch is trained and monitored; its checkpoint is not written yet."""

    def checkpoint_directory(self) -> AbstractContextManager[str]:
        """Where this epoch's checkpoint (and, after the last epoch, eval.json) is written; entered once an epoch."""
        raise NotImplementedError

    def save(self, trainer: Trainer, directory: str, metrics: dict[str, Any]) -> None:
        """Write the checkpoint (called where `writes`)."""
        trainer.save(directory)

    def report(self, trainer: Trainer, metrics: dict[str, Any], directory: str | None) -> None:
        """The epoch's metrics, with its checkpoint directory (None where this process writes none), still open."""
        raise NotImplementedError

    def log(self, text: str) -> None:
        """The full evaluation's progress (called where `writes`)."""


def epoch_line(trainer: Trainer, metrics: dict[str, Any]) -> str:
    """The line an epoch logs: its number, loss, kNN top-1 and throughput."""
    return (f"epoch {trainer.epoch}/{trainer.run.epochs} loss {metrics['loss']:.4f} knn_top1 {metrics['knn_top1']:.4f} "
            f"images/s {metrics['images_per_s']:.0f}")


def run_epochs(trainer: Trainer, eval_sets: list[EvalSet], session: EpochSession) -> None:
    """From the trainer's epoch to run.epochs: train an epoch on the session's batches, run the kNN monitor (every
    rank its share of the features), write the checkpoint, after the last epoch with evaluation.final the full
    evaluation (eval.json beside the checkpoint, its figures in the metrics), and report the epoch's metrics."""
    run = trainer.run
    while trainer.epoch < run.epochs:
        try:
            metrics = trainer.train_epoch(session.batches())  # takes steps_per_epoch batches, leaves the rest for the next
        except NonFiniteLossError as error:
            session.nonfinite(error)
            raise
        metrics.update(session.tags())
        try:
            metrics.update(trainer.monitor(eval_sets))  # every rank: its share of the features
        except DamagedShardError as error:
            session.damaged(error)
            raise
        session.monitored(trainer, metrics)
        with session.checkpoint_directory() as directory:
            if session.writes:
                session.save(trainer, directory, metrics)
            if run.evaluation.final and trainer.epoch == run.epochs:  # every rank: its share of the features
                rows = trainer.full_evaluation(eval_sets, log=session.log if session.writes else None)
                if session.writes:
                    write_text(f"{directory}/{EVAL_FILE}", eval_document(run, trainer.epoch, rows, session.eval_checkpoint))
                    metrics.update(flat_metrics(rows))
            session.report(trainer, metrics, directory if session.writes else None)
