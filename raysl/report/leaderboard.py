"""The leaderboard of an experiment: one row per trial of the search space (CSV and Markdown), best first.

Imports raysl.report.experiment.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from raysl.errors import UserError
from raysl.io.storage import exists, read_text
from raysl.report.experiment import METRIC, SET_PREFIX, Experiment, trial_run_dir


def leaderboard_rows(experiment: Experiment) -> list[dict[str, Any]]:
    """One row per trial, best first by the sweep's metric (unscored trials last): the swept values, the metric
    when it is not knn_top1, the kNN scores, epochs, status, the last loss and throughput, the compute it reserved
    (CPU- and GPU-seconds: its resources times its wall time), the final evaluation's values and the last
    knn_top1/<set> values."""
    trials = experiment.trials
    metric, mode = experiment.metric, experiment.mode
    eval_keys = list(dict.fromkeys(key for trial in trials for key in trial.last if key.startswith("eval/")))
    set_keys = list(dict.fromkeys(key for trial in trials for row in trial.rows for key in row if key.startswith(SET_PREFIX)))
    cpus, gpus = experiment.sweep.trial_resources if experiment.sweep is not None else (None, None)
    rows = []
    for trial in trials:
        last = trial.last
        seconds = trial.seconds
        rows.append({
            "trial": trial.trial_id,
            **{key: trial.params.get(key) for key in experiment.search_keys},
            **({metric: trial.score(metric, mode)} if metric != METRIC else {}),
            METRIC: trial.best,
            f"last_{METRIC}": trial.final,
            "epochs": trial.epochs,
            "status": trial.status,
            "loss": last.get("loss"),
            "images_per_s": last.get("images_per_s"),
            "cpu_seconds": round(seconds * cpus, 1) if seconds is not None and cpus is not None else None,
            "gpu_seconds": round(seconds * gpus, 1) if seconds is not None and gpus is not None else None,
            **{key: last.get(key) for key in eval_keys if key != metric},
            **{key: trial.latest(key) for key in set_keys if key != metric},
        })
    sign = -1.0 if mode == "max" else 1.0
    rows.sort(key=lambda row: (row[metric] is None, sign * (row[metric] or 0.0)))
    return rows


def format_cell(value: Any) -> str:
    """A leaderboard cell, in the log and in Markdown: floats to 4 significant digits, missing (or NaN) as a dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def markdown_cell(value: Any) -> str:
    return format_cell(value).replace("|", "\\|")


def leaderboard_csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO()
    columns = list(rows[0]) if rows else ["trial", METRIC, "status"]
    writer = csv.DictWriter(text, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: json.dumps(value) if isinstance(value, (list, dict)) else value for key, value in row.items()})
    return text.getvalue()


def _status_kind(status: str) -> str:
    """The status without its details, for the counts: failed, running or interrupted, stopped early (ASHA)..."""
    return re.sub(r" \(epoch \d+\)$", "", status.split(":", 1)[0])


def _epochs(count: int) -> str:
    return f"{count} epoch" + ("" if count == 1 else "s")


def leaderboard_markdown(experiment: Experiment, rows: list[dict[str, Any]], plots: Iterable[str] = ()) -> str:
    """The leaderboard as Markdown: a title, the protocol, the trial counts, the table (final evaluation:
    the `all` budget only) and the plots."""
    sweep = experiment.sweep
    lines = [f"# Sweep report: {experiment.name}", ""]
    of = f" of {experiment.main_set}" if experiment.main_set else ""
    if sweep is not None:
        evaluation = sweep.base.evaluation
        bank = f"the first {evaluation.bank_limit} train images" if evaluation.bank_limit else "the train split"
        queries = f"the first {evaluation.query_limit} test images" if evaluation.query_limit else "the test split"
        budget = f", time budget {sweep.time_budget_minutes:g} min" if sweep.time_budget_minutes else ""
        lines.append(
            f"Protocol: kNN top-1{of} on the backbone's features after each epoch (k={evaluation.knn_k}, temperature "
            f"{evaluation.knn_temperature:g}, cosine similarity, weighted vote; bank: {bank}, queries: {queries}); `{METRIC}` is the best over epochs, `last_{METRIC}` the last. Method {sweep.base.method.name}, "
            f"up to {_epochs(experiment.max_epochs)}, scheduler {sweep.scheduler.name}{budget}."
        )
    else:
        lines.append(
            f"Protocol: kNN top-1{of} after each epoch (k and temperature unknown: no sweep.yaml); `{METRIC}` is "
            f"the best over epochs, `last_{METRIC}` the last; {_epochs(experiment.max_epochs)} is the most any trial reached."
        )
    counts: dict[str, int] = {}
    for trial in experiment.trials:
        counts[_status_kind(trial.status)] = counts.get(_status_kind(trial.status), 0) + 1
    lines += ["", f"Trials: {len(experiment.trials)} ({', '.join(f'{n} {kind}' for kind, n in counts.items())})."]
    if experiment.metric != METRIC:
        lines.append(f"Ranked by `{experiment.metric}` ({experiment.mode}imum over epochs).")
    cpu, gpu = (sum(row[key] or 0.0 for row in rows) for key in ("cpu_seconds", "gpu_seconds"))
    if cpu:
        lines.append(f"Compute reserved by the trials: {cpu / 3600:.2f} CPU-hours" + (f", {gpu / 3600:.2f} GPU-hours" if gpu else "")
                     + " (each trial's CPUs and GPUs times its wall time).")
    lines.append("")
    columns = [column for column in (rows[0] if rows else {"trial": None}) if not column.startswith("eval/") or "/all/" in column]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(markdown_cell(row.get(column)) for column in columns) + " |" for row in rows]
    plots = list(plots)
    if plots:
        lines += ["", "## Plots"] + [line for path in plots for line in ("", f"![{path}]({path})")]
    return "\n".join(lines) + "\n"


def best_trial_run(uri: str, log=print) -> str:
    """A sweep's experiment directory (it holds leaderboard.csv) -> its best trial's run directory; else `uri`."""
    uri = uri.rstrip("/")
    if not exists(f"{uri}/leaderboard.csv"):
        return uri
    rows = [row for row in csv.DictReader(io.StringIO(read_text(f"{uri}/leaderboard.csv") or ""))
            if row.get("knn_top1") not in (None, "", "nan")]
    if not rows:
        raise UserError(f"{uri}: a sweep without a scored trial (leaderboard.csv); export one trial's checkpoint instead")
    log(f"{uri}: best trial {rows[0]['trial']} (knn_top1 {rows[0]['knn_top1']})")
    return trial_run_dir(uri, rows[0]["trial"])
