"""A single-worker trial's training loop run inside the Tune trial itself: no TorchTrainer controller, no worker
group and no placement group of its own (what Ray Train adds costs a single worker seconds per trial and a
process or two). The loop is Ray Train's (raysl.ray_glue.worker.train_loop): the same reports, checkpoints, resume
from the latest checkpoint (falling back past unreadable ones), NaN stop and damaged-shard markers; Tune keeps
the checkpoints in the trial's directory and restarts a failed trial (trial_retries + max_failures).
"""

from __future__ import annotations

import torch
from ray import tune

from raysl.config import RunConfig
from raysl.data.pretraining import plan_pretraining
from raysl.ray_glue.pipeline import view_dataset_or_damage
from raysl.ray_glue.worker import DAMAGED_MARKER, LoopSession, loop_config_of, train_loop


def trial_resources(run: RunConfig) -> dict[str, float]:
    """What the Tune trial reserves: the Train worker's CPUs and GPUs when it runs the loop itself."""
    return {"cpu": run.resources.cpus_per_worker, "gpu": run.resources.gpus_per_worker}


def run_in_trial(run: RunConfig, data_uri: str, pool_uris: list[str], *, run_dir: str, git_commit: str, label: str) -> None:
    """Train `run` in this Tune trial: the view dataset streamed from here (this process runs Ray Data's executor,
    as a single Train worker did), reports and checkpoints through tune.report."""
    plan = plan_pretraining(run, data_uri, pool_uris)
    dataset = view_dataset_or_damage(run, plan, f"{run_dir}/{DAMAGED_MARKER}")
    device = torch.device("cuda", 0) if run.resources.gpus_per_worker > 0 and torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    loop_config = loop_config_of(run, data_uri, pool_uris, plan, git_commit=git_commit, label=label, run_dir=run_dir)
    train_loop(loop_config, LoopSession(
        rank=0, world_size=1, device=device, checkpoint=tune.get_checkpoint(), shard=dataset.iterator(),
        report=lambda metrics, checkpoint: tune.report(metrics, checkpoint=checkpoint), checkpoint_type=tune.Checkpoint,
    ))
