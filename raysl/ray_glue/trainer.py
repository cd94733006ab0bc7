"""A run as a Ray Train TorchTrainer: workers, resources and node labels from the config, storage, failure
config and the run directory; a failure summarised in one line.

Imports raysl.config and raysl.ray_glue.worker.
"""

from __future__ import annotations

import ray
import ray.train
import ray.train.torch

from raysl.config import RunConfig
from raysl.data.pretraining import (
    plan_pretraining,
)
from raysl.ray_glue import failure_policy
from raysl.ray_glue.pipeline import datasets_to_split, view_dataset_or_damage
from raysl.ray_glue.worker import DAMAGED_MARKER, loop_config_of, train_loop_per_worker


def run_directory(storage_path: str, name: str) -> str:
    """Where Ray Train keeps a run's checkpoints (and raysl its nonfinite.txt): storage_path/name."""
    return f"{storage_path.rstrip('/')}/{name}"


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
    failure_policy.install()  # a damaged shard, a non-finite loss, a config error: raised, the worker group not restarted
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
