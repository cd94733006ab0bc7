"""Ray Tune glue: the per-trial driver function, the Tuner (ASHA / FIFO), resume, and the leaderboard.

Train V2 runs inside Tune as a *driver function* that builds a TorchTrainer and fits it, forwarding rank
0's reports to Tune with TuneReportCallback (see ../shared notes: `Tuner(TorchTrainer)` does not work).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from raysl.config import ASHAConfig, SweepConfig, apply_assignment, dump_yaml
from raysl.data.pretraining import save_corruption_samples
from raysl.data.pretraining import recorded_damage
from raysl.data.shards import DamagedShardError
from raysl.errors import UserError
from raysl.ray_glue.train import (
    DAMAGED_MARKER, NONFINITE_MARKER, build_trainer, configure_data_context, failure_summary, run_directory,
)
from raysl.report import build_report
from raysl.report import error_status as status_from_error_text
from raysl.storage import exists, list_dirs, read_text, write_text
from raysl.training.loop import NonFiniteLossError

METRIC = "knn_top1"
# The trial driver only builds and watches a TorchTrainer; Tune rejects a zero-CPU trial.
DRIVER_CPUS = 0.1
SWEEP_FILE = "sweep.yaml"  # the validated sweep config, beside Tune's files in the experiment directory


def raysl_trial(config: dict[str, Any], *, sweep: dict[str, Any], data_uri: str, git_commit: str, cwd: str) -> None:
    """One trial: the base run config with the drawn values (local paths against the driver's `cwd`), trained
    by a TorchTrainer named after the trial, so a restarted trial resumes from its own latest checkpoint."""
    sweep_config = SweepConfig.model_validate(sweep)
    run = apply_assignment(sweep_config.base, config["search"]).with_absolute_paths(cwd)
    run = run.model_copy(update={"epochs": sweep_config.max_epochs})
    context = tune.get_context()
    trial_id = context.get_trial_id()
    experiment_dir = experiment_path(sweep_config, context.get_experiment_name())
    train_storage = f"{experiment_dir}/train"
    marker = f"{run_directory(train_storage, trial_id)}/{NONFINITE_MARKER}"
    if earlier := read_text(marker):  # a retried trial whose loss already went non-finite: not re-run
        raise NonFiniteLossError(earlier)
    damaged = f"{run_directory(train_storage, trial_id)}/{DAMAGED_MARKER}"
    if earlier := recorded_damage(damaged):  # a retried trial that met a damaged shard, still damaged
        raise DamagedShardError(earlier)
    configure_data_context(run)  # before the trainer copies the DataContext
    from raysl.cli import resolve_pool  # the trial's own pool (data.pool can be searched); prepared before Ray started

    trainer = build_trainer(
        run,
        data_uri,
        pool_uris=resolve_pool(run),
        storage_path=train_storage,
        name=trial_id,
        git_commit=git_commit,
        callbacks=[TuneReportCallback()],
        label=trial_id,
    )
    try:
        trainer.fit()
    except ray.train.TrainingFailedError as error:
        if earlier := read_text(marker):
            raise NonFiniteLossError(earlier) from None
        if earlier := recorded_damage(damaged):
            raise DamagedShardError(earlier) from None
        raise RuntimeError(f"trial {trial_id} failed: {failure_summary(error)}") from error


def absolute_path(path: str) -> str:
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def experiment_path(sweep: SweepConfig, name: str | None = None) -> str:
    return f"{absolute_path(sweep.storage_path).rstrip('/')}/{name or sweep.name}"


def _to_tune(distribution) -> Any:
    kind, args = distribution.kind, getattr(distribution, distribution.kind)
    return {
        "choice": lambda: tune.choice(args),
        "grid": lambda: tune.grid_search(args),
        "uniform": lambda: tune.uniform(*args),
        "loguniform": lambda: tune.loguniform(*args),
        "randint": lambda: tune.randint(*args),
        "qrandint": lambda: tune.qrandint(*args),
    }[kind]()


def check_cpu_budget(sweep: SweepConfig, total_cpus: float, where: str) -> None:
    """Each running trial holds its driver, its Train workers and its augmentation actors; Ray Data's
    read tasks need CPUs left over, or every trial waits for data forever (the sweep hangs)."""
    resources = sweep.base.resources
    per_trial = (
        DRIVER_CPUS + resources.workers * resources.cpus_per_worker + resources.data_actors * resources.data_cpus
    )
    concurrent = min(sweep.max_concurrent_trials, sweep.trial_count)
    free = total_cpus - concurrent * per_trial
    if per_trial > total_cpus:
        raise UserError(
            f"base.resources: one trial reserves {per_trial:g} CPUs ({DRIVER_CPUS} driver + workers x cpus_per_worker "
            f"+ data_actors x data_cpus) but {where} has {total_cpus:g}"
        )
    if free < resources.data_cpus - 1e-9:
        raise UserError(
            f"max_concurrent_trials / base.resources.cpus_per_worker: {concurrent} trials at once reserve "
            f"{concurrent * per_trial:g} of {where}'s {total_cpus:g} CPUs, leaving {max(free, 0):g}; Ray Data's "
            f"read tasks need base.resources.data_cpus = {resources.data_cpus:g} free or the sweep hangs. "
            f"Lower max_concurrent_trials, base.resources.cpus_per_worker or base.resources.data_cpus."
        )


def _trainable(sweep: SweepConfig, data_uri: str, git_commit: str):
    trainable = tune.with_parameters(
        raysl_trial, sweep=sweep.model_dump(mode="json"), data_uri=data_uri, git_commit=git_commit, cwd=os.getcwd()
    )
    return tune.with_resources(trainable, {"cpu": DRIVER_CPUS})


def _scheduler(sweep: SweepConfig):
    if isinstance(sweep.scheduler, ASHAConfig):
        return tune.schedulers.ASHAScheduler(
            # The run's own epoch, not Tune's report count: that restarts at 1 when a sweep is resumed,
            # while the Train run continues from its checkpoint's epoch.
            time_attr="epoch",
            max_t=sweep.max_epochs,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    return tune.schedulers.FIFOScheduler()


def _reporter(sweep: SweepConfig) -> tune.CLIReporter:
    return tune.CLIReporter(
        metric_columns={METRIC: "knn_top1", "epoch": "epochs", "loss": "loss", "images_per_s": "img/s"},
        parameter_columns={f"search/{key}": key for key in sweep.search},
        max_report_frequency=30,
        # sort_by_metric=True crashes Ray 2.60's reporter when two finished trials have no result yet
        # (e.g. cut by the time budget before their first epoch); the leaderboard is sorted instead.
        sort_by_metric=False,
    )


def fresh_experiment_name(sweep: SweepConfig) -> str:
    """The sweep's name, or name_2, name_3... when an experiment of that name already exists."""
    name, suffix = sweep.name, 1
    while exists(experiment_path(sweep, name)):
        suffix += 1
        name = f"{sweep.name}_{suffix}"
    return name


def latest_experiment_name(sweep: SweepConfig) -> str:
    """For --resume: the newest of name, name_2, ... that Tune can restore."""
    root = absolute_path(sweep.storage_path)
    candidates = [sweep.name] + [
        name for name in list_dirs(root) if name.startswith(f"{sweep.name}_") and name.rsplit("_", 1)[-1].isdigit()
    ]
    restorable = [name for name in candidates if tune.Tuner.can_restore(experiment_path(sweep, name))]
    if not restorable:
        raise UserError(f"--resume: no sweep named '{sweep.name}' to resume under {root} (storage_path)")
    return max(restorable, key=lambda name: int(name.rsplit("_", 1)[1]) if name != sweep.name else 1)


def run_sweep(sweep: SweepConfig, data_uri: str, *, git_commit: str, resume: bool = False, log=print) -> str:
    """Run (or resume) the sweep; write leaderboard.csv and best_config.yaml; return the experiment path."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic table: trial, swept values, knn_top1, epochs, status
    # Trials run in their own working directories: resolve a relative storage path here, once.
    sweep = sweep.model_copy(update={"storage_path": absolute_path(sweep.storage_path)})
    trainable = _trainable(sweep, data_uri, git_commit)
    if resume:
        name = latest_experiment_name(sweep)
        path = experiment_path(sweep, name)
        log(f"resuming sweep at {path}")
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        name = fresh_experiment_name(sweep)
        path = experiment_path(sweep, name)
        tuner = tune.Tuner(
            trainable,
            param_space={"search": {key: _to_tune(d) for key, d in sweep.search.items()}},
            tune_config=tune.TuneConfig(
                metric=METRIC,
                mode="max",
                scheduler=_scheduler(sweep),
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials,
                time_budget_s=sweep.time_budget_minutes * 60 if sweep.time_budget_minutes else None,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=sweep.storage_path,  # made absolute above
                # A trial whose driver died (its node lost) restarts; its Train run resumes from its checkpoint.
                failure_config=tune.FailureConfig(max_failures=sweep.trial_retries),
                progress_reporter=_reporter(sweep),
                verbose=1,
            ),
        )
        write_text(f"{path}/{SWEEP_FILE}", dump_yaml(sweep))  # what `raysl report` reads: search keys, epochs
        write_corruption_samples(sweep, data_uri, path, log)
        log(f"sweep '{name}': {sweep.trial_count} trials, results in {path}")
    results = tuner.fit()
    rows = leaderboard_rows(results, sweep)
    print_leaderboard(rows, log)
    write_best_config(rows, sweep, path, log)
    export_best(rows, path, log)
    try:
        build_report(path, log=log)
    except Exception as error:  # the sweep's results stand without the report; it can be rebuilt
        log(f"the report could not be built ({type(error).__name__}: {error}); retry with: raysl report {path}")
    failed = [result for result in results if result.error is not None]
    if failed and len(failed) == len(rows):
        raise UserError(
            f"all {len(rows)} trials failed; the first error:\n{_error_summary(failed[0].error)}\n"
            f"(full traces: error.txt in the trial directories under {path})"
        )
    return path


def write_corruption_samples(sweep: SweepConfig, data_uri: str, path: str, log=print) -> None:
    """plots/corruption_samples.png: what every corruption setting the sweep can draw does to the images."""
    settings = [sweep.base.data.corruption]
    for key, distribution in sweep.search.items():
        if key.startswith("data.corruption"):
            settings += [apply_assignment(sweep.base, {key: value}).data.corruption for value in distribution.values_to_check()]
    save_corruption_samples(data_uri, settings, f"{path}/plots/corruption_samples.png", log)


def _error_summary(error: BaseException) -> str:
    """The last lines of a trial's error: the user-facing cause, not Ray's wrapping frames."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return "\n".join(lines[-3:])


def leaderboard_rows(results, sweep: SweepConfig) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        history = result.metrics_dataframe
        metrics = result.metrics or {}
        knn_values = history[METRIC].dropna().tolist() if history is not None and METRIC in history else []
        epochs = int(metrics.get("epoch", 0) or 0)
        if result.error is not None:
            status = error_status(result.error)
        elif epochs >= sweep.max_epochs:
            status = "completed"
        else:
            reasons = (["ASHA"] if isinstance(sweep.scheduler, ASHAConfig) else []) + (
                ["time budget"] if sweep.time_budget_minutes else []
            )
            status = f"stopped early ({' or '.join(reasons)})" if reasons else "stopped early"
        search = (result.config or {}).get("search", {})
        rows.append(
            {
                "trial": metrics.get("trial_id") or Path(result.path).name,
                **{key: search.get(key) for key in sweep.search},
                METRIC: max(knn_values) if knn_values else float("nan"),
                "last_knn_top1": knn_values[-1] if knn_values else float("nan"),
                "epochs": epochs,
                "status": status,
                "loss": metrics.get("loss", float("nan")),
                "images_per_s": metrics.get("images_per_s", float("nan")),
                "_search": search,
            }
        )
    rows.sort(key=lambda row: -row[METRIC] if not math.isnan(row[METRIC]) else math.inf)
    return rows


def error_status(error: BaseException) -> str:
    """A failed trial's leaderboard status: the non-finite loss's epoch and step, or the error's type."""
    status = status_from_error_text(str(error))
    return status if status != "failed" else f"failed: {type(error).__name__}"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def print_leaderboard(rows: list[dict[str, Any]], log=print) -> None:
    """The leaderboard in the log; leaderboard.csv / .md and the plots are the report's (raysl/report.py)."""
    columns = [column for column in (rows[0] if rows else {"trial": None}) if not column.startswith("_")]
    table = [columns] + [[_format(row[column]) for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    log("\nleaderboard (best kNN top-1 per trial):")
    for line in table:
        log("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def export_best(rows: list[dict[str, Any]], path: str, log=print) -> None:
    """The best trial's backbone exported to best_backbone/ beside best_config.yaml (local experiments; on object
    storage: `raysl export EXPERIMENT --out DIR` where it is needed)."""
    scored = [row for row in rows if not math.isnan(row[METRIC])]
    if not scored:
        return
    if "://" in path:
        log(f"best backbone: raysl export {path} --out best_backbone")
        return
    from raysl.exporting import export_backbone

    try:
        export_backbone(f"{path}/train/{scored[0]['trial']}", f"{path}/best_backbone", log=lambda text: None)
        log(f"best backbone: {path}/best_backbone (raysl.load_backbone)")
    except Exception as error:  # the sweep's results stand without it; raysl export can redo it
        log(f"note: exporting the best backbone failed ({type(error).__name__}: {error}); run raysl export {path}")


def write_best_config(rows: list[dict[str, Any]], sweep: SweepConfig, path: str, log=print) -> None:
    scored = [row for row in rows if not math.isnan(row[METRIC])]
    if not scored:
        return
    best = scored[0]
    run = apply_assignment(sweep.base, best["_search"])
    run = run.model_copy(update={"name": f"{sweep.name}-best", "storage_path": sweep.storage_path})
    target = f"{path}/best_config.yaml"
    how = f"raysl train {target}" if "://" not in target else "copy it here, then raysl train best_config.yaml"
    header = f"# best trial {best['trial']} of sweep {path}: knn_top1 {best[METRIC]:.4f}\n# run it: {how}\n"
    write_text(target, header + dump_yaml(run))
    log(f"best config: {target}")
