"""`--smoke`: the same run or sweep, small enough to finish in a minute or two, and fitted to the machine it runs on.

Sizes shrink always (a few hundred images, one epoch, a small bank, two trials). Resources shrink when the
caller says which machine the run lands on (`machine`: this machine for an embedded Ray; nothing on a cluster,
whose nodes the sweep file already describes): one Train worker, a GPU only where the machine has one, CPUs
shared out between the trials at once and their augmentation actors, no node labels (this machine has none),
and on a machine without a GPU crops and evaluation images at most 64 px (local crops 32), a short probe.
Every value only ever goes down: a `--set` that asked for less keeps it.

Imports raysl.config's overrides, run and sweep modules.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from raysl.config.overrides import set_dotted
from raysl.config.run import RunConfig
from raysl.config.sweep import SearchDistribution, SweepConfig

SMOKE_RUN = {
    "epochs": 1,
    "data.train_limit": 512,
    "evaluation.bank_limit": 1000,
    "evaluation.query_limit": 500,
    "schedule.warmup_epochs": 0,
}
SMOKE_TRIALS_AT_ONCE = 2
CPU_GLOBAL_CROP = 64  # px: ResNet-18 on 512 images of 64 px views trains an epoch in well under a minute on 2 cores
CPU_LOCAL_CROP = 32
CPU_PROBE_EPOCHS = 5


class Machine(Protocol):
    """What a machine offers (raysl.ray_glue.packing.NodeShape is one)."""

    name: str
    cpus: float
    gpus: float


def smoke_run(data: dict[str, Any]) -> dict[str, Any]:
    """A run config's data with the smoke sizes set (before validation)."""
    for key, value in SMOKE_RUN.items():
        set_dotted(data, key, value, source="--smoke")
    batch = data.get("batch_size", RunConfig.model_fields["batch_size"].default)
    if isinstance(batch, int) and batch > 256:
        data["batch_size"] = 256
    return data


def smoke_sweep_data(data: dict[str, Any]) -> dict[str, Any]:
    """A sweep file's data with the smoke sizes set on its base, one sample, two trials at once, no early stopping."""
    base = data.get("base")
    if base is None or isinstance(base, dict):
        data["base"] = smoke_run(dict(base or {}))
    data["num_samples"] = 1
    data["max_concurrent_trials"] = SMOKE_TRIALS_AT_ONCE
    data["scheduler"] = {"name": "fifo"}
    return data


def smoke_search(sweep: SweepConfig) -> SweepConfig:
    """Two trials: the first two values of the first searched key (or two seeds when nothing is searched);
    with Optuna, two trials Optuna draws from the same distributions (its search runs as in the full sweep)."""
    if sweep.search_alg == "optuna":
        return sweep.model_copy(update={"num_samples": 2})
    search = {}
    if sweep.search:
        key, distribution = next(iter(sweep.search.items()))
        values = distribution.values_to_check()
        search[key] = SearchDistribution(grid=(values * 2)[:2])
    else:
        search["seed"] = SearchDistribution(grid=[sweep.base.seed, sweep.base.seed + 1])
    return sweep.model_copy(update={"search": search})


def fit_to_machine(run: RunConfig, machine: Machine, trials_at_once: int = 1) -> tuple[RunConfig, str | None]:
    """`run` shrunk to run on `machine` with `trials_at_once` such runs side by side; and one line saying what
    changed (None when nothing did). Each trial gets an equal share of the CPUs: half of it for its Train worker,
    a quarter for its augmentation actor (the rest stays free for Ray Data's read tasks and Ray itself)."""
    data = run.model_dump(mode="json")
    resources = data["resources"]
    share = max(machine.cpus, 1.0) / max(trials_at_once, 1)
    gpus = math.floor(machine.gpus)
    changes: list[str] = []

    def lower(section: dict[str, Any], key: str, value: Any, label: str) -> None:
        if section.get(key) is not None and section[key] > value:
            section[key] = value
            changes.append(label)

    lower(resources, "workers", 1, "1 Train worker")
    if resources["gpus_per_worker"] > 0 and gpus < 1:
        resources["gpus_per_worker"] = 0.0
        changes.append("on the CPU (no CUDA GPU here)")
    else:
        lower(resources, "gpus_per_worker", round(gpus / max(trials_at_once, 1), 3), f"{gpus / max(trials_at_once, 1):g} GPU each")
    cpus = max(0.25, round(share / 2, 2))
    lower(resources, "cpus_per_worker", cpus, f"{cpus:g} CPU each")
    lower(resources, "torch_threads", max(1, math.floor(resources["cpus_per_worker"])), "")
    lower(resources, "data_actors", 1, "1 augmentation actor")
    data_cpus = max(0.1, round(share / 4, 2))
    lower(resources, "data_cpus", data_cpus, f"{data_cpus:g} CPU per Ray Data task")
    labelled = [key for key in ("augment_on", "train_on") if resources.get(key)]
    for key in labelled:
        resources[key] = None
    if labelled:
        changes.append(f"no node labels ({', '.join(labelled)})")
    if resources["gpus_per_worker"] == 0:
        for crop in data["views"]["crops"]:
            limit = CPU_LOCAL_CROP if crop["role"] == "local" else CPU_GLOBAL_CROP
            lower(crop, "size", limit, f"{crop['role']} crops {limit} px")
        lower(data["evaluation"], "image_size", CPU_GLOBAL_CROP, f"evaluation images {CPU_GLOBAL_CROP} px")
        if data["evaluation"]["final"]:
            lower(data["evaluation"]["probe"], "epochs", CPU_PROBE_EPOCHS, f"a {CPU_PROBE_EPOCHS}-epoch probe")
    fitted = RunConfig.model_validate(data)
    said = list(dict.fromkeys(change for change in changes if change))
    if not said:
        return fitted, None
    gpu_text = f", {gpus} GPU" if gpus else ", no GPU"
    return fitted, f"--smoke: fitted to {machine.name} ({machine.cpus:g} CPUs{gpu_text}): {', '.join(said)}"
