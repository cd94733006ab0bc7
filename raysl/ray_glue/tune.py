"""A sweep through Ray Tune: the Tuner built from a SweepConfig (its search space, search algorithm, scheduler,
metric and mode, loggers and live view), run or resumed, and its ending (interrupted, stopped by the budget,
all trials failed) said in one line; the leaderboard and best backbone written at the end.

Imports raysl.config, raysl.report, raysl.outputs and the other raysl.ray_glue modules.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass
from typing import Any

from ray import tune

from raysl.config import ASHAConfig, SweepConfig, apply_assignment, dump_yaml
from raysl.data.pretraining import save_corruption_samples
from raysl.errors import UserError
from raysl.io.storage import absolute_path, delete_file, exists, list_dirs, write_text
from raysl.ray_glue.live import LiveView, interactive_output
from raysl.ray_glue.loggers import KeepLocalCSV, KeepLocalJson, RestoreHint, ScalarsOnlyTBX
from raysl.ray_glue.run_log import local_log_path, run_log
from raysl.ray_glue.search import build_scheduler, build_search_alg, to_tune
from raysl.ray_glue.sweep_end import export_best, print_leaderboard, write_best_config
from raysl.ray_glue.trial import experiment_path, trial_trainable
from raysl.report.build import build_report
from raysl.report.experiment import ASHA_STOPS, ENDING_FILE, error_cause, load_experiment
from raysl.report.leaderboard import leaderboard_rows as report_rows

SWEEP_FILE = "sweep.yaml"  # the validated sweep config, beside Tune's files in the experiment directory


def _reporter(sweep: SweepConfig, log_path: str | None = None) -> LiveView:
    """One table redrawn in place on a terminal, one line per trial event elsewhere (raysl.ray_glue.live)."""
    return LiveView(
        search_keys=list(sweep.search), metric=sweep.metric, mode=sweep.resolved_mode, max_epochs=sweep.max_epochs,
        trial_count=sweep.trial_count, time_budget_s=sweep.time_budget_minutes * 60 if sweep.time_budget_minutes else None,
        interactive=interactive_output(), log_path=log_path,
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
    if resume:
        name = latest_experiment_name(sweep)
    else:
        name = fresh_experiment_name(sweep)
    path = experiment_path(sweep, name)
    # Ray's and Tune's own output (trial tracebacks, retries, warnings) goes to the sweep's log; the screen keeps
    # the live view, the leaderboard and raysl's lines, each failed trial's cause among them.
    with run_log(local_log_path(path, name)) as screen:
        said = f"resuming sweep at {path}" if resume else f"sweep '{name}': {sweep.trial_count} trials, results in {path}"
        log(f"{said}; Ray's output: {screen.path}")
        return _run(sweep, data_uri, name, path, git_commit=git_commit, resume=resume, log=log, log_path=screen.path)


def _run(sweep: SweepConfig, data_uri: str, name: str, path: str, *, git_commit: str, resume: bool, log, log_path: str) -> SweepOutcome:
    trainable = trial_trainable(sweep, data_uri, git_commit)
    if resume:
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"search": {key: to_tune(d) for key, d in sweep.search.items()}},
            tune_config=tune.TuneConfig(
                metric=sweep.metric,
                mode=sweep.resolved_mode,
                search_alg=build_search_alg(sweep),
                scheduler=build_scheduler(sweep, path),
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
                progress_reporter=_reporter(sweep, log_path),
                callbacks=[ScalarsOnlyTBX(), KeepLocalJson(), KeepLocalCSV()],
                verbose=1,
            ),
        )
        write_text(f"{path}/{SWEEP_FILE}", dump_yaml(sweep))  # what `raysl report` reads: search keys, epochs
        write_corruption_samples(sweep, data_uri, path, log)
    delete_file(f"{path}/{ENDING_FILE}")  # until this run of the sweep ends: trials left RUNNING were killed
    if isinstance(sweep.scheduler, ASHAConfig) and not resume:
        write_text(f"{path}/{ASHA_STOPS}", "{}\n")  # there: ASHA's stops are recorded (none yet)
    hint = RestoreHint()
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
            f"all {created} trials failed; the first: {error_cause(str(failed[0].error))}\n"
            f"(full traces: error.txt in the trial directories under {path}; Ray's output: {log_path})"
        )
    return SweepOutcome(path, rows, interrupted, best)


def write_corruption_samples(sweep: SweepConfig, data_uri: str, path: str, log=print) -> None:
    """plots/corruption_samples.png: what every corruption setting the sweep can draw does to the images."""
    settings = [sweep.base.data.corruption]
    for key, distribution in sweep.search.items():
        if key.startswith("data.corruption"):
            settings += [apply_assignment(sweep.base, {key: value}).data.corruption for value in distribution.values_to_check()]
    save_corruption_samples(data_uri, settings, f"{path}/plots/corruption_samples.png", log)
