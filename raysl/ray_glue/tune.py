"""Ray Tune glue: the per-trial driver function, the Tuner (ASHA / FIFO), resume, and the leaderboard.

Train V2 runs inside Tune as a *driver function* that builds a TorchTrainer and fits it, forwarding rank
0's reports to Tune with TuneReportCallback (see ../shared notes: `Tuner(TorchTrainer)` does not work).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

from raysl.config import DRIVER_CPUS, ASHAConfig, PBTConfig, SweepConfig, apply_assignment, dump_yaml
from raysl.data.pretraining import save_corruption_samples
from raysl.errors import UserError
from raysl.ingest.resolve import resolve_pool
from raysl.ray_glue.in_trial import run_in_trial, trial_resources
from raysl.ray_glue.live import LiveView, interactive_output
from raysl.ray_glue.train import (
    build_trainer, configure_data_context, failure_summary, raise_recorded_failure, run_directory,
)
from raysl.report.build import build_report
from raysl.report.experiment import ASHA_STOPS, ENDING_FILE, load_experiment, trial_run_dir
from raysl.report.leaderboard import format_cell
from raysl.report.leaderboard import leaderboard_rows as report_rows
from raysl.io.storage import absolute_path, delete_file, exists, is_remote, list_dirs, read_text, write_text

SWEEP_FILE = "sweep.yaml"  # the validated sweep config, beside Tune's files in the experiment directory


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


def _trainable(sweep: SweepConfig, data_uri: str, git_commit: str):
    trainable = tune.with_parameters(
        raysl_trial, sweep=sweep.model_dump(mode="json"), data_uri=data_uri, git_commit=git_commit, cwd=os.getcwd()
    )
    # A trial running its loop itself reserves its Train worker's CPUs / GPUs; a TorchTrainer's driver next to nothing.
    return tune.with_resources(trainable, trial_resources(sweep.base) if sweep.in_trial else {"cpu": DRIVER_CPUS})


class RecordingASHA(tune.schedulers.ASHAScheduler):
    """ASHA that notes the trials it stops early in the experiment directory (ASHA_STOPS): Tune marks a trial ASHA
    stopped and one the time budget cut alike (TERMINATED), and the leaderboard tells them apart by this."""

    def __init__(self, *, stops_file: str, **options):
        super().__init__(**options)
        self._stops_file = stops_file
        self._stops: dict[str, int] = {}

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get("epoch", 0) < self._max_t:
            self._stops[trial.trial_id] = int(result.get("epoch", 0))
            try:  # merged with what is there (a resumed sweep's earlier run); a failed write must not end the sweep
                recorded = json.loads(read_text(self._stops_file) or "{}")
                write_text(self._stops_file, json.dumps({**recorded, **self._stops}, indent=1, sort_keys=True) + "\n")
            except Exception as error:  # noqa: BLE001
                logging.getLogger(__name__).warning("could not record ASHA's stop of %s in %s: %s",
                                                    trial.trial_id, self._stops_file, error)
        return decision


class ClipToRanges:
    """PBT's explore step after its own: a value scaled by 0.8 / 1.2 is brought back into its search range (so
    every value a trial runs with is one the schema validated before Ray started)."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = ranges

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        search = config.get("search", {})
        for key, (low, high) in self.ranges.items():
            if key in search:
                value = min(max(search[key], low), high)
                search[key] = type(search[key])(value) if isinstance(search[key], int) else value
        return config


def _pbt(sweep: SweepConfig) -> tune.schedulers.PopulationBasedTraining:
    mutations, ranges = {}, {}
    for key in sweep.pbt_keys:
        distribution = sweep.search[key]
        if distribution.kind in ("grid", "choice"):  # PBT shifts to a neighbouring value, or resamples
            mutations[key] = list(distribution.values_to_check())
        else:
            mutations[key] = _to_tune(distribution)
            ranges[key] = tuple(distribution.values_to_check())
    pbt = sweep.scheduler
    return tune.schedulers.PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=pbt.perturbation_interval, burn_in_period=pbt.burn_in,
        hyperparam_mutations={"search": mutations}, quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability, custom_explore_fn=ClipToRanges(ranges),
    )


def _scheduler(sweep: SweepConfig, path: str):
    if isinstance(sweep.scheduler, PBTConfig):
        return _pbt(sweep)
    if isinstance(sweep.scheduler, ASHAConfig):
        return RecordingASHA(
            stops_file=f"{path}/{ASHA_STOPS}",
            # The run's own epoch, not Tune's report count: that restarts at 1 when a sweep is resumed,
            # while the Train run continues from its checkpoint's epoch.
            time_attr="epoch",
            max_t=sweep.max_epochs,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    return tune.schedulers.FIFOScheduler()


def _search_alg(sweep: SweepConfig):
    """Ray Tune's variant generator (random and grid; seeded by search_seed; it limits the trials at once itself:
    Tune ignores TuneConfig.max_concurrent_trials for it), or Optuna's TPE (OptunaSearch with a TPESampler seeded
    by search_seed, its first startup_trials drawn at random; limited by TuneConfig.max_concurrent_trials). The
    metric and mode come from the TuneConfig."""
    if sweep.search_alg == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.search_seed,
                                                               n_startup_trials=sweep.startup_trials))
    return tune.search.BasicVariantGenerator(random_state=sweep.search_seed, max_concurrent=sweep.max_concurrent_trials)


def _reporter(sweep: SweepConfig) -> LiveView:
    """One table redrawn in place on a terminal, one line per trial event elsewhere (raysl.ray_glue.live)."""
    return LiveView(
        search_keys=list(sweep.search), metric=sweep.metric, mode=sweep.resolved_mode, max_epochs=sweep.max_epochs,
        trial_count=sweep.trial_count, time_budget_s=sweep.time_budget_minutes * 60 if sweep.time_budget_minutes else None,
        interactive=interactive_output(),
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


class ScalarsOnlyTBX(TBXLoggerCallback):
    """Tune's TensorBoard logger (a trial's scalars every epoch) without its hparams: Tune writes those only for
    trials that complete or fail, not for trials a time budget or Ctrl-C cut. raysl.report writes every trial's
    hparams, with its status, once the sweep ends (and `raysl report` again)."""

    def _try_log_hparams(self, trial, result) -> None:
        pass


class _KeepLocalResults:
    """Tune's result.json / progress.csv loggers, except on a trial's restart in this run of the sweep (a PBT
    exploit, a retry after a failure): Tune then replaces the driver's file with the copy in storage, which is
    synced only now and then, and the epochs reported since the last sync are lost (seen: a PBT trial's first epoch
    gone from its result.json). The driver's own file is complete; the copy in storage is read only when there is
    none here (`--resume` in a new process)."""

    def _restore_from_remote(self, file_name: str, trial) -> None:
        if not Path(trial.local_path, file_name).exists():
            super()._restore_from_remote(file_name, trial)


class KeepLocalJson(_KeepLocalResults, JsonLoggerCallback):
    pass


class KeepLocalCSV(_KeepLocalResults, CSVLoggerCallback):
    pass


class _RestoreHint(logging.Filter):
    """Drops Tune's `Tuner.restore(path=..., trainable=...)` hint: raysl prints its own `--resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage() and "Trials did not complete" not in record.getMessage()


class SweepInterrupted(KeyboardInterrupt):
    """A second Ctrl-C while the sweep was stopping (Tune lets go of SIGINT after the first): the experiment at
    `path` is marked interrupted, its report is not rebuilt; `--resume` continues it."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path
        self.resume_command: str | None = None


@dataclass
class SweepOutcome:
    path: str
    """The experiment directory."""
    rows: list[dict[str, Any]]
    """The leaderboard (raysl.report.leaderboard.leaderboard_rows): best knn_top1 first."""
    interrupted: bool
    best_params: dict[str, Any] | None
    """The best trial's drawn values (None: no trial scored)."""


def run_sweep(sweep: SweepConfig, data_uri: str, *, git_commit: str, resume: bool = False, log=print) -> SweepOutcome:
    """Run (or resume) the sweep; write the report (leaderboard, plots, every trial's TensorBoard hparams),
    best_config.yaml and best_backbone/; return the experiment path, the leaderboard and whether it was interrupted."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's classic output path: it prints through progress_reporter
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
                metric=sweep.metric,
                mode=sweep.resolved_mode,
                search_alg=_search_alg(sweep),
                scheduler=_scheduler(sweep, path),
                num_samples=sweep.num_samples,
                max_concurrent_trials=sweep.max_concurrent_trials if sweep.search_alg == "optuna" else None,
                time_budget_s=sweep.time_budget_minutes * 60 if sweep.time_budget_minutes else None,
                trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=sweep.storage_path,  # made absolute above
                # A trial whose driver died (its node lost) restarts; its Train run resumes from its checkpoint.
                # (in-trial loops: also the restarts Ray Train would have made, base.max_failures)
                failure_config=tune.FailureConfig(
                    max_failures=-1 if sweep.in_trial and sweep.base.max_failures < 0
                    else sweep.trial_retries + (sweep.base.max_failures if sweep.in_trial else 0)),
                # PBT: every checkpoint kept; an exploit restores the donor's checkpoint of its last report, which
                # the donor's next epoch would otherwise have deleted before the exploiting trial restarts from it
                checkpoint_config=tune.CheckpointConfig(
                    num_to_keep=None if sweep.pbt_keys else sweep.base.checkpoints_to_keep),
                progress_reporter=_reporter(sweep),
                callbacks=[ScalarsOnlyTBX(), KeepLocalJson(), KeepLocalCSV()],
                verbose=1,
            ),
        )
        write_text(f"{path}/{SWEEP_FILE}", dump_yaml(sweep))  # what `raysl report` reads: search keys, epochs
        write_corruption_samples(sweep, data_uri, path, log)
        log(f"sweep '{name}': {sweep.trial_count} trials, results in {path}")
    delete_file(f"{path}/{ENDING_FILE}")  # until this run of the sweep ends: trials left RUNNING were killed
    if isinstance(sweep.scheduler, ASHAConfig) and not resume:
        write_text(f"{path}/{ASHA_STOPS}", "{}\n")  # there: ASHA's stops are recorded (none yet)
    hint = _RestoreHint()
    logging.getLogger("ray.tune.tune").addFilter(hint)
    try:
        with warnings.catch_warnings():
            # Tune's advice for PBT (reuse_actors + reset_config): a trial's start-up is ~0.2 s with the loop in the
            # trial (benchmarks/sweep_overhead.py), and nothing a user can set changes it
            warnings.filterwarnings("ignore", message="Consider boosting PBT performance", category=UserWarning)
            results = tuner.fit()
    except KeyboardInterrupt:  # a second Ctrl-C: out now, the experiment marked interrupted
        write_text(f"{path}/{ENDING_FILE}", json.dumps({"ended": "interrupted"}) + "\n")
        raise SweepInterrupted(path) from None
    finally:
        logging.getLogger("ray.tune.tune").removeFilter(hint)
    # Stopped by Ctrl-C (SIGINT; or SIGUSR1), Tune saves its last experiment state with the trials it was running
    # RUNNING and those to come PENDING; a finished sweep, or one its time budget ended, with none (the budget stops
    # them first: TERMINATED). The state on storage, not the Trial objects: cleaning up marks those stopped.
    interrupted = any(trial.state in ("RUNNING", "PENDING", "PAUSED") for trial in load_experiment(path).trials)
    ended = "interrupted" if interrupted else "finished"
    write_text(f"{path}/{ENDING_FILE}", json.dumps({"ended": ended}) + "\n")
    try:
        written = build_report(path, log=lambda text: None)
    except Exception as error:  # the sweep's results stand without the report; it can be rebuilt
        written = []
        log(f"the report could not be built ({type(error).__name__}: {error}); retry with: raysl report {path}")
    experiment = load_experiment(path)
    rows = report_rows(experiment)
    print_leaderboard(rows, sweep.metric, log)
    # A trial's drawn values; under PBT the values it ended with (PBT changed them while it ran)
    params = {trial.trial_id: {**trial.params, **((trial.last.get("config") or {}).get("search") or {})}
              if sweep.pbt_keys else trial.params for trial in experiment.trials}
    scored = [row for row in rows if row[sweep.metric] is not None]
    best = params.get(scored[0]["trial"]) if scored else None
    if scored:
        write_best_config(scored[0], best, sweep, path, log)
        if not interrupted:
            export_best(scored[0]["trial"], path, log)
    if written:
        log(f"report: {path}/leaderboard.md, plots in {path}/plots; every trial in TensorBoard: tensorboard --logdir {path}")
    failed = [result for result in results if result.error is not None]
    created = sum(trial.created for trial in experiment.trials)  # the leaderboard also lists those never created
    if failed and len(failed) == created and not interrupted:
        raise UserError(
            f"all {created} trials failed; the first error:\n{_error_summary(failed[0].error)}\n"
            f"(full traces: error.txt in the trial directories under {path})"
        )
    return SweepOutcome(path, rows, interrupted, best)


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


def print_leaderboard(rows: list[dict[str, Any]], metric: str = "knn_top1", log=print) -> None:
    """The leaderboard's main columns in the log (trial, swept values, kNN, epochs, status, loss, img/s);
    leaderboard.csv / .md hold every column."""
    first = list(rows[0]) if rows else ["trial", "knn_top1", "status"]
    columns = first[: first.index("images_per_s") + 1] if "images_per_s" in first else first
    table = [columns] + [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    log(f"\nleaderboard (best {'kNN top-1' if metric == 'knn_top1' else metric} per trial):")
    for line in table:
        log("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def export_best(trial: str, path: str, log=print) -> None:
    """The best trial's backbone exported to best_backbone/ beside best_config.yaml (local experiments; on object
    storage: `raysl export EXPERIMENT --out DIR` where it is needed)."""
    if is_remote(path):
        log(f"best backbone: raysl export {path} --out best_backbone")
        return
    from raysl.exporting import export_backbone

    try:
        export_backbone(trial_run_dir(path, trial), f"{path}/best_backbone", log=lambda text: None)
        log(f"best backbone: {path}/best_backbone (raysl.load_backbone)")
    except Exception as error:  # the sweep's results stand without it; raysl export can redo it
        log(f"note: exporting the best backbone failed ({type(error).__name__}: {error}); run raysl export {path}")


def write_best_config(best: dict[str, Any], params: dict[str, Any], sweep: SweepConfig, path: str, log=print) -> None:
    """best_config.yaml: the base run config with the best trial's drawn values, runnable with raysl train."""
    run = apply_assignment(sweep.base, params)
    run = run.model_copy(update={"name": f"{sweep.name}-best", "storage_path": sweep.storage_path})
    target = f"{path}/best_config.yaml"
    how = f"raysl train {target}" if not is_remote(target) else "copy it here, then raysl train best_config.yaml"
    header = f"# best trial {best['trial']} of sweep {path}: {sweep.metric} {best[sweep.metric]:.4g}\n# run it: {how}\n"
    write_text(target, header + dump_yaml(run))
    log(f"best config: {target}")
