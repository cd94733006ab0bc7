"""One trial of a sweep: its run config from the drawn values, its loop run in the trial itself (one worker) or
through a TorchTrainer named after the trial, a recorded failure raised without a retry.

Imports raysl.config, raysl.ingest.resolve and raysl.ray_glue's in_trial, trainer and worker.
"""

from __future__ import annotations

import os
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raysl.config import DRIVER_CPUS, SweepConfig, apply_assignment
from raysl.ingest.resolve import resolve_pool
from raysl.io.storage import absolute_path
from raysl.ray_glue.in_trial import run_in_trial, trial_resources
from raysl.ray_glue.pipeline import configure_data_context
from raysl.ray_glue.failure_policy import failure_summary
from raysl.ray_glue.trainer import build_trainer, run_directory
from raysl.ray_glue.worker import raise_recorded_failure


def experiment_path(sweep: SweepConfig, name: str | None = None) -> str:
    return f"{absolute_path(sweep.storage_path).rstrip('/')}/{name or sweep.name}"


def raysl_trial(config: dict[str, Any], *, sweep: dict[str, Any], data_uri: str, git_commit: str, cwd: str) -> None:
    """One trial: the base run config with the drawn values (local paths against the driver's `cwd`), trained
    in this trial itself (one worker: raysl.ray_glue.in_trial; checkpoints in the trial's directory) or by a
    TorchTrainer named after the trial (under train/), so a restarted trial resumes from its own latest checkpoint."""
    sweep_config = SweepConfig.model_validate(sweep)
    run = apply_assignment(sweep_config.base, config["search"]).with_absolute_paths(cwd)
    run = run.model_copy(update={"epochs": sweep_config.max_epochs})
    context = tune.get_context()
    trial_id = context.get_trial_id()
    experiment_dir = experiment_path(sweep_config, context.get_experiment_name())
    train_storage = f"{experiment_dir}/train"
    run_dir = f"{experiment_dir}/trial_{trial_id}" if sweep_config.in_trial else run_directory(train_storage, trial_id)
    # a retried trial whose loss already went non-finite, or that met a damaged shard still damaged: not re-run
    raise_recorded_failure(run_dir)
    configure_data_context(run)  # before the view dataset (or the trainer, which copies it) is made
    if sweep_config.in_trial:
        run_in_trial(run, data_uri, resolve_pool(run), run_dir=run_dir, git_commit=git_commit, label=trial_id)
        return
    trainer = build_trainer(
        run,
        data_uri,
        pool_uris=resolve_pool(run),  # the trial's own pool (data.pool can be searched); prepared before Ray started
        storage_path=train_storage,
        name=trial_id,
        git_commit=git_commit,
        callbacks=[TuneReportCallback()],
        label=trial_id,
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise_recorded_failure(run_dir)  # the cause a worker recorded, rather than Ray's wrapping of it
        raise RuntimeError(f"trial {trial_id} failed: {failure_summary(error)}") from error


def trial_trainable(sweep: SweepConfig, data_uri: str, git_commit: str):
    trainable = tune.with_parameters(
        raysl_trial, sweep=sweep.model_dump(mode="json"), data_uri=data_uri, git_commit=git_commit, cwd=os.getcwd()
    )
    # A trial running its loop itself reserves its Train worker's CPUs / GPUs; a TorchTrainer's driver next to nothing.
    return tune.with_resources(trainable, trial_resources(sweep.base) if sweep.in_trial else {"cpu": DRIVER_CPUS})
