"""`raysl report`: a sweep's experiment directory as a leaderboard (Markdown + CSV) and PNG plots.

Reads what Ray Tune and raysl leave in an experiment directory, on a local path or object storage alike
(through raysl.io.storage only): sweep.yaml, the newest experiment_state-*.json, and per trial params.json,
result.json (one JSON line per epoch report) and error.txt. Works on finished, failed and interrupted
sweeps (driver killed: trials the state still calls RUNNING, trials that never started). Writes
leaderboard.csv, leaderboard.md and plots/*.png into the experiment directory.
"""

from __future__ import annotations

import collections
import csv
import io
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from raysl.config import ASHAConfig, SweepConfig
from raysl.errors import UserError
from raysl.io.storage import exists, list_dirs, list_files, read_text, write_bytes, write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

METRIC = "knn_top1"
SET_PREFIX = f"{METRIC}/"
EVAL_ALL = re.compile(r"eval/([^/]+)/all/(\w+)")
DPI = 100
FAILED_LOSS = re.compile(r"loss became (\S+) at epoch (\d+), step (\d+)")
ERROR_NAME = re.compile(r"\b(\w+(?:Error|Exception))\b")
# How the last `raysl sweep` of this experiment ended: {"ended": "finished" | "interrupted"}. Written when the
# fit returns, removed when one starts: trials Tune's state still calls RUNNING without it belong to a sweep
# that is live or whose driver was killed.
ENDING_FILE = "sweep_end.json"
# {trial_id: epoch} of the trials ASHA stopped early. Tune marks those and the trials a time budget cut alike
# (TERMINATED); a TERMINATED trial short of its epochs that ASHA did not stop was cut by the budget.
ASHA_STOPS = "asha_stops.json"
# A trial's TensorBoard hparams (HParams view), one file per trial, rewritten by each report. Named to sort before
# Tune's timestamped event files: TensorBoard follows only a run's last file by name, which must stay Tune's.
HPARAMS_FILE = "events.out.tfevents.0000000000.raysl-hparams"


# ----------------------------------------------------------------------------- loading


@dataclass
class Trial:
    """One trial: its drawn values, its epoch reports (the last one per epoch, in epoch order), its status."""

    trial_id: str
    params: dict[str, Any]
    rows: list[dict[str, Any]]
    state: str | None = None
    """Tune's status in the experiment state (TERMINATED, ERROR, RUNNING, PENDING, PAUSED); None: not listed."""
    error: str | None = None
    """The text of error.txt, when the trial failed."""
    status: str = ""
    """The leaderboard's status (completed, stopped early (ASHA), interrupted (epoch N), failed: ..., not started, ...)."""
    directory: str = ""
    """The trial's directory under the experiment (trial_<id>)."""
    created: bool = True
    """False: a trial of the search space that Tune never created (the sweep ended first): no id, no directory."""

    @property
    def epochs(self) -> int:
        """The last epoch reached (0: none)."""
        return int(self.rows[-1]["epoch"]) if self.rows else 0

    @property
    def last(self) -> dict[str, Any]:
        return self.rows[-1] if self.rows else {}

    @property
    def knn(self) -> list[tuple[int, float]]:
        """(epoch, knn_top1) of every epoch with a finite score measured at that epoch (evaluation.every > 1:
        the epochs between carry the last figure, knn_epoch < epoch; they are left out)."""
        return [(int(row["epoch"]), row[METRIC]) for row in self.rows if _finite(row.get(METRIC)) is not None
                and int(_finite(row.get("knn_epoch")) or row["epoch"]) == int(row["epoch"])]

    @property
    def best(self) -> float | None:
        return max((value for _, value in self.knn), default=None)

    @property
    def final(self) -> float | None:
        """The last epoch's knn_top1."""
        return _finite(self.last.get(METRIC))

    def score(self, metric: str, mode: str) -> float | None:
        """The trial's best `metric` over its epochs (knn_top1: measured epochs only); None: never reported."""
        if metric == METRIC:
            values = [value for _, value in self.knn]
        else:
            values = [value for row in self.rows if (value := _finite(row.get(metric))) is not None]
        return (max if mode == "max" else min)(values, default=None)

    @property
    def seconds(self) -> float | None:
        """Wall seconds the trial ran (Tune's time_total_s: over every attempt, resumed ones too)."""
        return _finite(self.last.get("time_total_s"))

    def latest(self, key: str) -> Any:
        """The key's value in the last report that has it (None: never reported)."""
        return next((row[key] for row in reversed(self.rows) if key in row), None)


@dataclass
class Experiment:
    """A Tune experiment directory as raysl wrote it."""

    uri: str
    name: str
    sweep: SweepConfig | None
    trials: list[Trial]
    search_keys: list[str]
    max_epochs: int
    main_set: str | None
    """The evaluation set plain knn_top1 reports, `<main dataset>:<first label set>` (None: unknown)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """What the sweep optimised (sweep.yaml's metric; knn_top1 without it)."""
        return self.sweep.metric if self.sweep is not None else METRIC

    @property
    def mode(self) -> str:
        return self.sweep.resolved_mode if self.sweep is not None else "max"

    @property
    def main_dataset(self) -> str | None:
        return self.main_set.split(":", 1)[0] if self.main_set else None


def load_experiment(experiment_dir: str) -> Experiment:
    """Read an experiment directory (local path or URI); a UserError when it holds no Tune experiment."""
    uri = experiment_dir.rstrip("/")
    states = list_files(uri, "experiment_state-*.json")
    trial_dirs = [name for name in list_dirs(uri) if name.startswith("trial_")]
    if not states and not trial_dirs:
        raise UserError(f"no Tune experiment at {experiment_dir} (no experiment_state-*.json and no trial_* directories)")
    state = _read_state(f"{uri}/{max(states)}") if states else {}
    sweep, warnings = _read_sweep(f"{uri}/sweep.yaml")

    directories = {str(info.get("relative_logdir") or f"trial_{trial_id}"): trial_id for trial_id, info in state.items()}
    for name in trial_dirs:  # trials the state does not list (it is written now and then)
        directories.setdefault(name, name.removeprefix("trial_"))
    trials: dict[str, Trial] = {}
    for directory, trial_id in directories.items():
        info = state.get(trial_id, {})
        base = f"{uri}/{directory}"
        params = _read_json(f"{base}/params.json") or {"search": (info.get("config") or {}).get("search") or {}}
        trials[trial_id] = Trial(
            trial_id=trial_id,
            params=dict(params.get("search") or {}),
            rows=_read_rows(read_text(f"{base}/result.json")),
            state=info.get("status"),
            error=read_text(f"{base}/error.txt"),
            directory=directory,
        )
    ordered = [trials[trial_id] for trial_id in sorted(trials)]
    ordered += _never_created(sweep, ordered)

    if sweep is not None:
        search_keys, max_epochs = list(sweep.search), sweep.max_epochs
    else:
        search_keys = list(dict.fromkeys(key for trial in ordered for key in trial.params))
        max_epochs = max((trial.epochs for trial in ordered), default=0)
    ended = (_read_json(f"{uri}/{ENDING_FILE}") or {}).get("ended")
    asha_stops = _read_json(f"{uri}/{ASHA_STOPS}") if exists(f"{uri}/{ASHA_STOPS}") else None
    for trial in ordered:
        trial.status = trial_status(trial, max_epochs, sweep, ended, asha_stops)
    name = uri.rsplit("/", 1)[-1]
    return Experiment(uri, name, sweep, ordered, search_keys, max_epochs, _main_set(sweep, ordered), warnings)


def _never_created(sweep: SweepConfig | None, trials: list[Trial]) -> list[Trial]:
    """The trials of the sweep's search space (sweep.trial_count: the grid's points times num_samples) that Tune
    never created, when the sweep ended (time budget, Ctrl-C, a killed driver) before it made them: Tune's state
    and directories hold only the trials it made. Each has its grid point's values (those no created trial has,
    in Tune's order: the first key varies fastest); values drawn at random are unknown, never drawn."""
    if sweep is None or len(trials) >= sweep.trial_count:
        return []
    grid = {key: distribution.grid for key, distribution in sweep.search.items() if distribution.grid is not None}
    keys = list(grid)[::-1]  # itertools.product varies its last iterable fastest
    points = [dict(zip(keys, values)) for values in itertools.product(*(grid[key] for key in keys))] * sweep.num_samples

    def key_of(params: dict[str, Any]) -> str:
        return json.dumps([params.get(key) for key in keys], sort_keys=True, default=str)

    made = collections.Counter(key_of(trial.params) for trial in trials)
    missing = []
    for point in points:
        if made[key_of(point)] > 0:
            made[key_of(point)] -= 1
        else:
            missing.append(point)
    missing = missing[: sweep.trial_count - len(trials)]
    return [Trial(trial_id=f"not-created-{number}", params={key: point[key] for key in grid}, rows=[], created=False)
            for number, point in enumerate(missing, start=1)]


def trial_run_dir(experiment_uri: str, trial_id: str) -> str:
    """Where a trial's checkpoints are: train/<trial> (a TorchTrainer's run directory) or, for a trial that ran
    its loop itself (resources.trial_loop auto, one worker), its own trial_<trial> directory."""
    train = f"{experiment_uri.rstrip('/')}/train/{trial_id}"
    return train if exists(train) else f"{experiment_uri.rstrip('/')}/trial_{trial_id}"


def _read_json(uri: str) -> Any:
    text = read_text(uri)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _read_state(uri: str) -> dict[str, dict[str, Any]]:
    """trial id -> the trial's JSON in Tune's experiment state."""
    try:
        data = json.loads(read_text(uri) or "")
        trials = {}
        for entry in data["trial_data"]:
            info = json.loads(entry[0] if isinstance(entry, list) else entry)
            trials[str(info["trial_id"])] = info
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise UserError(f"{uri}: not a readable Ray Tune experiment state ({type(error).__name__}: {error})") from None
    return trials


def _read_sweep(uri: str) -> tuple[SweepConfig | None, list[str]]:
    """The sweep config of sweep.yaml (None when missing or unreadable, with a warning for the latter)."""
    text = read_text(uri)
    if text is None:
        return None, []
    try:
        return SweepConfig.model_validate(yaml.safe_load(text)), []
    except (yaml.YAMLError, ValidationError) as error:
        first = str(error).strip().splitlines()[0]
        return None, [f"note: {uri} is not a valid sweep config for this raysl ({first}); reporting without it"]


def _read_rows(text: str | None) -> list[dict[str, Any]]:
    """result.json's reports, the last one per epoch (a resumed sweep repeats epochs), in epoch order."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in (text or "").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short when the driver was killed
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), (int, float)):
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def _main_set(sweep: SweepConfig | None, trials: list[Trial]) -> str | None:
    if sweep is not None:
        return f"{sweep.base.data.label}:{sweep.base.evaluation.label_sets[0]}"
    # No sweep.yaml: the finally evaluated set without a knn_top1/<set> key is the one plain knn_top1 reports.
    monitored = {key.removeprefix(SET_PREFIX) for trial in trials for row in trial.rows for key in row if key.startswith(SET_PREFIX)}
    evaluated = {found[1] for trial in trials for key in trial.last if (found := EVAL_ALL.fullmatch(key))}
    if len(evaluated - monitored) == 1:
        return (evaluated - monitored).pop()
    # Else the dataset with a label set besides `label` is the main one (pooled datasets report `label` only).
    coarse = {name.split(":", 1)[0] for name in monitored if ":" in name and not name.endswith(":label")}
    return f"{coarse.pop()}:label" if len(coarse) == 1 else None


def error_status(text: str) -> str:
    """A failed trial's status from its error text: the non-finite loss's epoch and step, or the error's type."""
    found = FAILED_LOSS.search(text)
    if found:
        return f"failed: loss {found[1]} at epoch {found[2]} step {found[3]}"
    names = ERROR_NAME.findall(text)
    return f"failed: {names[-1]}" if names else "failed"


def trial_status(trial: Trial, max_epochs: int, sweep: SweepConfig | None, ended: str | None = None,
                 asha_stops: dict[str, int] | None = None) -> str:
    """completed, stopped early (ASHA), stopped by the time budget (epoch N), interrupted (epoch N), not started
    (...), failed: ...; `ended` is how the last `raysl sweep` ended (ENDING_FILE: it says why Tune's state still
    calls a trial RUNNING; without it, a live sweep or a killed driver); `asha_stops` the trials ASHA stopped
    (ASHA_STOPS; None in experiments from before it was written)."""
    if not trial.created:  # the sweep ended before Tune made it
        if ended == "interrupted":
            return "not started (interrupted)"
        budget = sweep is not None and sweep.time_budget_minutes is not None
        return "not started (stopped by the time budget)" if ended == "finished" and budget else "not started"
    # error.txt outlives the attempt that wrote it: a trial Tune retried (trial_retries) and that then
    # finished is TERMINATED, with the error of its failed attempt still beside it.
    if trial.state == "ERROR" or (trial.error is not None and trial.state != "TERMINATED"):
        return error_status(trial.error or "")
    if trial.rows and trial.epochs >= max_epochs:
        return "completed"
    budget = sweep is not None and sweep.time_budget_minutes is not None
    asha = sweep is not None and isinstance(sweep.scheduler, ASHAConfig)
    if trial.state in ("RUNNING", "PAUSED", "PENDING", None):
        cut = "interrupted" if ended == "interrupted" else None
        if not trial.rows:
            return f"not started ({cut})" if cut else "not started"
        return f"{cut or 'running or interrupted'} (epoch {trial.epochs})"
    # TERMINATED short of its epochs: stopped by ASHA, else by the time budget (Tune stops every live trial then)
    if asha and (asha_stops is None and not budget or trial.trial_id in (asha_stops or {})):
        return "stopped early (ASHA)"
    if budget and (asha_stops is not None or not asha):
        return f"stopped by the time budget (epoch {trial.epochs})" if trial.rows else "not started (stopped by the time budget)"
    return f"stopped early ({' or '.join(['ASHA'] * asha + ['time budget'] * budget)})" if asha or budget else "stopped early"


def write_hparams(experiment: Experiment, log=print) -> list[str]:
    """Every trial's hparams for TensorBoard's HParams view, however it ended: its drawn values, its status, and
    its best and last knn_top1 and epochs as metrics (also Tune's last ray/tune/* scalars), in one events file in
    its directory (rewritten each time). Tune writes hparams only for trials that complete or fail."""
    import tempfile

    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    metrics = {"raysl/best_knn_top1": "best", "raysl/last_knn_top1": "final", "raysl/epochs": "epochs"}
    written = []
    for trial in experiment.trials:
        if not trial.created:  # no directory, nothing for TensorBoard (the leaderboard lists it)
            continue
        values = {key: _hparam(trial.params.get(key)) for key in experiment.search_keys}
        values.update(trial=trial.trial_id, status=trial.status)
        summaries = hparams(values, {**{tag: 0.0 for tag in metrics}, "ray/tune/knn_top1": 0.0, "ray/tune/loss": 0.0})
        with tempfile.TemporaryDirectory() as scratch:
            writer = SummaryWriter(scratch)
            for summary in summaries:
                writer.file_writer.add_summary(summary)
            for tag, attribute in metrics.items():
                value = getattr(trial, attribute)
                if value is not None:
                    writer.add_scalar(tag, float(value), global_step=trial.epochs)
            writer.close()
            (events,) = [name for name in os.listdir(scratch) if "tfevents" in name]
            with open(os.path.join(scratch, events), "rb") as handle:
                data = handle.read()
        target = f"{experiment.uri}/{trial.directory or 'trial_' + trial.trial_id}/{HPARAMS_FILE}"
        write_bytes(target, data)
        written.append(target)
        log(f"wrote {target}")
    return written


def _hparam(value: Any) -> float | int | str | bool:
    """A value TensorBoard's hparams take: numbers, strings and booleans as they are, anything else as JSON."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value)


# ----------------------------------------------------------------------------- leaderboard


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


def _markdown_cell(value: Any) -> str:
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
    lines += ["| " + " | ".join(_markdown_cell(row.get(column)) for column in columns) + " |" for row in rows]
    plots = list(plots)
    if plots:
        lines += ["", "## Plots"] + [line for path in plots for line in ("", f"![{path}]({path})")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part (temperature for method.temperature), or the whole key where two would clash."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def _config_label(experiment: Experiment, params: dict[str, Any], exclude: Iterable[str] = ()) -> str:
    names = _short_names(experiment.search_keys)
    skip = set(exclude)
    return ", ".join(f"{names[key]}={_value_text(params.get(key))}" for key in experiment.search_keys if key not in skip)


def _trial_label(experiment: Experiment, trial: Trial, limit: int = 48) -> str:
    tail = trial.trial_id.rsplit("_", 1)[-1]
    label = f"{tail if tail.isdigit() else trial.trial_id}: {_config_label(experiment, trial.params)}".rstrip(": ")
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _figure(width: float = 7.0, height: float = 4.2, columns: int = 1, sharey: bool = True) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg, without pyplot (no global state, nothing to close)
    axes = figure.subplots(1, columns, squeeze=False, sharey=sharey)[0]
    return figure, list(axes)


def _png(figure: Figure) -> bytes:
    """The figure as a 256-colour PNG (plots need no more; about 5x smaller than Agg's RGBA)."""
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=DPI)
    image = Image.open(rendered).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _legend(figure: Figure, axes: Axes, count: int) -> None:
    if count:
        place = "outside right upper" if count > 6 else "best"
        (figure if count > 6 else axes).legend(loc=place, fontsize="small" if count <= 12 else "x-small")


def plot_knn_per_epoch(experiment: Experiment) -> bytes | None:
    """knn_top1 against epoch, one line per trial; an x where a trial stopped before the last epoch."""
    trials = [trial for trial in experiment.trials if trial.knn]
    if not trials:
        return None
    figure, (axes,) = _figure(8.0 if len(trials) > 6 else 7.0)
    for index, trial in enumerate(trials):
        epochs, values = zip(*trial.knn)
        color, style = f"C{index % 10}", ("-", "--", ":", "-.")[index // 10 % 4]
        axes.plot(epochs, values, marker="o", markersize=3.5, color=color, linestyle=style, label=_trial_label(experiment, trial))
        if trial.epochs < experiment.max_epochs:
            axes.plot(epochs[-1], values[-1], marker="x", markersize=9, color=color, linestyle="none")
    axes.set(xlabel="epoch (x: a trial's last epoch, before the sweep's last)", ylabel=f"{METRIC} (kNN top-1)")
    figure.suptitle(f"{experiment.name}: kNN top-1 per epoch")
    axes.set_xlim(0.5, max(experiment.max_epochs, *(trial.epochs for trial in trials)) + 0.5)
    axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    axes.grid(alpha=0.3)
    _legend(figure, axes, len(trials))
    return _png(figure)


def _positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """x positions of parameter values: numbers as they are, anything else at category positions 0, 1, ..."""
    if all(_is_number(value) for value in values):
        return [float(value) for value in values], None
    categories = list(dict.fromkeys(_value_text(value) for value in values))
    return [float(categories.index(_value_text(value))) for value in values], categories


def _set_x_axis(axes: Axes, xs: list[float], categories: list[str] | None) -> None:
    """Category names at their positions; a log scale for positive numbers spanning a factor of 10 or more."""
    if categories is not None:
        axes.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        axes.set_xlim(-0.5, len(categories) - 0.5)
    elif min(xs) > 0 and max(xs) / min(xs) >= 10:
        axes.set_xscale("log")


def plot_final_vs(experiment: Experiment, key: str) -> bytes | None:
    """Best knn_top1 of each scored trial against the key's value (filled: completed)."""
    scored = [trial for trial in experiment.trials if trial.best is not None and key in trial.params]
    if not scored:
        return None
    xs, categories = _positions([trial.params[key] for trial in scored])
    figure, (axes,) = _figure()
    for completed, label in ((True, "completed"), (False, "not completed (best so far)")):
        points = [(x, trial.best) for x, trial in zip(xs, scored) if (trial.status == "completed") == completed]
        if points:
            axes.scatter(*zip(*points), s=40, label=label,
                         facecolors="C0" if completed else "none", edgecolors="C0" if completed else "C1")
    _set_x_axis(axes, xs, categories)
    axes.set(xlabel=key, ylabel=f"best {METRIC}", title=f"{experiment.name}: best kNN top-1 vs {key}")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _png(figure)


def _method(experiment: Experiment, trial: Trial) -> str | None:
    if "method.name" in trial.params:
        return str(trial.params["method.name"])
    return experiment.sweep.base.method.name if experiment.sweep is not None else None


def _study_lines(experiment: Experiment, x_key: str) -> dict[str, dict[float, list[float]]]:
    """Completed trials' final knn_top1 by line (the method, then the other swept values but seeds) and x."""
    lines: dict[str, dict[float, list[float]]] = {}
    exclude = [x_key, "method.name"] + [key for key in experiment.search_keys if key.rsplit(".", 1)[-1] == "seed"]
    for trial in experiment.trials:
        x, y = _finite(trial.params.get(x_key)), trial.final
        if trial.status != "completed" or x is None or y is None:
            continue
        parts = [_method(experiment, trial), _config_label(experiment, trial.params, exclude)]
        label = ", ".join(part for part in parts if part) or "all trials"
        lines.setdefault(label, {}).setdefault(x, []).append(y)
    return lines


def _draw_lines(axes: Axes, lines: dict[str, dict[float, list[float]]]) -> None:
    """One line per entry: the mean per x, with min-max error bars where trials repeat."""
    for label, points in lines.items():
        xs = sorted(points)
        means = [sum(points[x]) / len(points[x]) for x in xs]
        low = [mean - min(points[x]) for mean, x in zip(means, xs)]
        high = [max(points[x]) - mean for mean, x in zip(means, xs)]
        axes.errorbar(xs, means, yerr=[low, high] if any(low) or any(high) else None, marker="o", capsize=3, label=label)
    axes.grid(alpha=0.3)


def plot_study_quantity(experiment: Experiment) -> bytes | None:
    """Final kNN top-1 against the pretraining set's size (data.subset.count or .fraction), per method."""
    key = next((key for key in ("data.subset.count", "data.subset.fraction") if key in experiment.search_keys), None)
    lines = _study_lines(experiment, key) if key else {}
    if not lines:
        return None
    figure, (axes,) = _figure()
    _draw_lines(axes, lines)
    axes.set_xscale("log")
    xlabel = "pretraining images (data.subset.count)" if key.endswith("count") else "pretraining set size (data.subset.fraction of the train split)"
    axes.set(xlabel=xlabel, ylabel=f"final {METRIC}", title=f"{experiment.name}: data quantity")
    _legend(figure, axes, len(lines))
    return _png(figure)


def plot_study_quality(experiment: Experiment) -> bytes | None:
    """One panel per swept data.corruption.* key: final kNN top-1 against its value, per method."""
    panels = [(key, lines) for key in experiment.search_keys
              if key.startswith("data.corruption.") and key != "data.corruption.seed" and (lines := _study_lines(experiment, key))]
    if not panels:
        return None
    figure, axes_list = _figure(4.0 * len(panels) + 1.5, 4.2, len(panels))
    for axes, (key, lines) in zip(axes_list, panels):
        _draw_lines(axes, lines)
        axes.set(xlabel=key.removeprefix("data.corruption."), title=key)
        axes.legend(loc="best", fontsize="small" if len(lines) <= 6 else "x-small")  # each panel's own lines
    axes_list[0].set_ylabel(f"final {METRIC}")
    figure.suptitle(f"{experiment.name}: data quality (pretraining corruptions)")
    return _png(figure)


def _set_scores(experiment: Experiment, trial: Trial, metric: str) -> dict[str, float]:
    """Final scores per evaluation set: the final evaluation's `all` budget, else (kNN top-1) the last monitor value."""
    scores: dict[str, float] = {}
    if metric == METRIC:
        if (value := trial.final) is not None:
            scores[experiment.main_set or "main"] = value
        for key in dict.fromkeys(key for row in trial.rows for key in row if key.startswith(SET_PREFIX)):
            if (value := _finite(trial.latest(key))) is not None:
                scores[key.removeprefix(SET_PREFIX)] = value
    for key, raw in trial.last.items():
        found = EVAL_ALL.fullmatch(key)
        if found and found[2] == metric and (value := _finite(raw)) is not None:
            scores[found[1]] = value
    return scores


def _bar_groups(experiment: Experiment, metric: str, keep: Callable[[str], bool]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(evaluation sets, config label -> set -> mean score) over completed trials, for the sets `keep` accepts."""
    sums: dict[str, dict[str, list[float]]] = {}
    for trial in experiment.trials:
        if trial.status != "completed":
            continue
        label = _config_label(experiment, trial.params) or trial.trial_id
        for name, value in _set_scores(experiment, trial, metric).items():
            if keep(name):
                sums.setdefault(label, {}).setdefault(name, []).append(value)
    sets = list(dict.fromkeys(name for scores in sums.values() for name in scores))
    main = experiment.main_set or "main"
    sets.sort(key=lambda name: name != main)
    return sets, {label: {name: sum(v) / len(v) for name, v in scores.items()} for label, scores in sums.items()}


def _draw_bars(axes: Axes, sets: list[str], groups: dict[str, dict[str, float]], ylabel: str) -> None:
    width = 0.8 / max(len(groups), 1)
    for index, (label, scores) in enumerate(groups.items()):
        offsets = [(position - 0.4 + width * (index + 0.5), scores[name]) for position, name in enumerate(sets) if name in scores]
        axes.bar(*zip(*offsets), width=width, label=label)
    axes.set_xticks(range(len(sets)), sets, rotation=15 if len(sets) > 3 else 0)
    axes.set(ylabel=ylabel, ylim=(0, 1))
    axes.grid(alpha=0.3, axis="y")


def plot_study_granularity(experiment: Experiment) -> bytes | None:
    """Grouped bars of final kNN top-1 (and probe top-1 when evaluated) per label set of the main dataset."""
    dataset = experiment.main_dataset
    if dataset is None:
        return None
    of_main = lambda name: name.split(":", 1)[0] == dataset  # noqa: E731
    sets, groups = _bar_groups(experiment, METRIC, of_main)
    if len(sets) < 2:
        return None
    probe_sets, probe_groups = _bar_groups(experiment, "probe_top1", of_main)
    panels = [(sets, groups, "final kNN top-1")] + ([(probe_sets, probe_groups, "final linear probe top-1")] if probe_sets else [])
    figure, axes_list = _figure(4.5 * len(panels) + 2.5, 4.2, len(panels))
    for axes, (names, bars, ylabel) in zip(axes_list, panels):
        _draw_bars(axes, names, bars, ylabel)
        axes.set_xlabel("label set (coarser or finer labels of the same images)")
    figure.suptitle(f"{experiment.name}: task granularity ({dataset})")
    _legend(figure, axes_list[-1], len(groups))
    return _png(figure)


def pbt_schedule(trial: Trial, key: str) -> list[tuple[int, Any]]:
    """(epoch, value) of a searched key as the trial ran each epoch (Tune writes each report's config; PBT
    changes the values of running trials)."""
    return [(int(row["epoch"]), value) for row in trial.rows
            if (value := ((row.get("config") or {}).get("search") or {}).get(key)) is not None]


def plot_pbt_schedules(experiment: Experiment) -> bytes | None:
    """Population Based Training: each perturbed key's value per epoch, one line per trial (a step where PBT's
    exploit gave the trial a better trial's checkpoint and new values)."""
    keys = experiment.sweep.pbt_keys if experiment.sweep is not None else []
    series = {key: [(trial, points) for trial in experiment.trials if (points := pbt_schedule(trial, key))] for key in keys}
    if not any(series.values()):
        return None
    figure, axes_list = _figure(4.2 * len(keys) + 1.0, 3.8, columns=len(keys), sharey=False)
    for axes, key in zip(axes_list, keys):
        for index, (trial, points) in enumerate(series[key]):
            epochs, values = zip(*points)
            axes.step(epochs, values, where="post", marker="o", markersize=3, color=f"C{index % 10}",
                      label=_trial_label(experiment, trial))
        if all(_is_number(value) and value > 0 for _, points in series[key] for _, value in points):
            axes.set_yscale("log")
        axes.set(xlabel="epoch", title=key)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{experiment.name}: PBT's values per epoch (a step: exploit + explore)")
    _legend(figure, axes_list[-1], len(experiment.trials))
    return _png(figure)


def plot_study_domain(experiment: Experiment) -> bytes | None:
    """Grouped bars of final kNN top-1 per evaluation dataset (the main one first)."""
    main, dataset = experiment.main_set or "main", experiment.main_dataset
    other = lambda name: name.endswith(":label") and name.split(":", 1)[0] != dataset  # noqa: E731
    sets, groups = _bar_groups(experiment, METRIC, lambda name: name == main or other(name))
    if not any(other(name) for name in sets):
        return None
    figure, (axes,) = _figure(8.0 if len(groups) > 6 else 7.0)
    _draw_bars(axes, sets, groups, "final kNN top-1")
    axes.set_xticks(range(len(sets)), [name.split(":", 1)[0] for name in sets])
    axes.set(xlabel="evaluation dataset", title=f"{experiment.name}: domain (kNN per evaluation dataset)")
    _legend(figure, axes, len(groups))
    return _png(figure)


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key)


def build_report(experiment_dir: str, *, log: Callable[[str], None] = print) -> list[str]:
    """Write leaderboard.csv, plots/*.png and leaderboard.md into the experiment directory; return their URIs."""
    experiment = load_experiment(experiment_dir)
    for warning in experiment.warnings:
        log(warning)
    uri, written = experiment.uri, []

    def write(relative: str, data: bytes | str) -> None:
        target = f"{uri}/{relative}"
        (write_text if isinstance(data, str) else write_bytes)(target, data)
        written.append(target)
        log(f"wrote {target}")

    rows = leaderboard_rows(experiment)
    write("leaderboard.csv", leaderboard_csv(rows))
    plots = [("knn_per_epoch", plot_knn_per_epoch(experiment))]
    plots += [(f"final_vs_{_file_name(key)}", plot_final_vs(experiment, key)) for key in experiment.search_keys]
    plots += [
        ("study_quantity", plot_study_quantity(experiment)),
        ("study_quality", plot_study_quality(experiment)),
        ("study_granularity", plot_study_granularity(experiment)),
        ("study_domain", plot_study_domain(experiment)),
        ("pbt_schedules", plot_pbt_schedules(experiment)),
    ]
    images = []
    for name, png in plots:
        if png is not None:
            write(f"plots/{name}.png", png)
            images.append(f"plots/{name}.png")
    if exists(f"{uri}/plots/corruption_samples.png"):  # written when a sweep with corruptions starts
        images.append("plots/corruption_samples.png")
    write("leaderboard.md", leaderboard_markdown(experiment, rows, images))
    return written + write_hparams(experiment, log)


# ----------------------------------------------------------------------------- several experiments


def plot_comparison(experiments: list[Experiment]) -> bytes | None:
    """knn_top1 against epoch for every trial of every experiment, one colour per experiment (its best trial
    solid and thick, the others thin)."""
    if not any(trial.knn for experiment in experiments for trial in experiment.trials):
        return None
    figure, (axes,) = _figure(8.0)
    for index, experiment in enumerate(experiments):
        trials = sorted((trial for trial in experiment.trials if trial.knn), key=lambda trial: -(trial.best or 0.0))
        for rank, trial in enumerate(trials):
            epochs, values = zip(*trial.knn)
            axes.plot(epochs, values, color=f"C{index % 10}", marker="o" if rank == 0 else None, markersize=3.5,
                      linewidth=2.2 if rank == 0 else 0.8, alpha=1.0 if rank == 0 else 0.45,
                      label=f"{experiment.name} (best {trial.best:.4f}, {len(trials)} trials)" if rank == 0 else None)
    axes.set(xlabel="epoch", ylabel=f"{METRIC} (kNN top-1)")
    figure.suptitle("kNN top-1 per epoch: " + " vs ".join(experiment.name for experiment in experiments))
    axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return _png(figure)


def build_comparison(experiment_dirs: list[str], out: str, log=print) -> list[str]:
    """Several experiments in one table (comparison.md / .csv: every trial, labelled by its experiment, best first
    by knn_top1) and one kNN-per-epoch plot (plots/comparison_knn_per_epoch.png), written under `out`."""
    experiments = [load_experiment(directory) for directory in experiment_dirs]
    names = [experiment.name for experiment in experiments]
    for experiment in experiments:  # the same name twice (results_a/moco, results_b/moco)
        if names.count(experiment.name) > 1:
            experiment.name = f"{experiment.name} ({experiment.uri})"
        for warning in experiment.warnings:
            log(warning)
    rows = [{"experiment": experiment.name, **row} for experiment in experiments for row in leaderboard_rows(experiment)]
    rows.sort(key=lambda row: (row[METRIC] is None, -(row[METRIC] or 0.0)))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    rows = [{column: row.get(column) for column in columns} for row in rows]
    uri, written = out.rstrip("/"), []

    def write(relative: str, data: bytes | str) -> None:
        target = f"{uri}/{relative}"
        (write_text if isinstance(data, str) else write_bytes)(target, data)
        written.append(target)
        log(f"wrote {target}")

    write("comparison.csv", leaderboard_csv(rows))
    lines = [f"# Sweep comparison: {', '.join(experiment.name for experiment in experiments)}", ""]
    lines += [f"- {experiment.name}: {experiment.uri}, {len(experiment.trials)} trials, best knn_top1 "
              + format_cell(max((trial.best for trial in experiment.trials if trial.best is not None), default=None))
              + (f", compute {sum(row['cpu_seconds'] or 0.0 for row in rows if row['experiment'] == experiment.name) / 3600:.2f} CPU-hours")
              for experiment in experiments]
    shown = [column for column in columns if not column.startswith(("eval/", SET_PREFIX)) or "/all/" in column]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(row.get(column)) for column in shown) + " |" for row in rows]
    png = plot_comparison(experiments)
    if png is not None:
        write("plots/comparison_knn_per_epoch.png", png)
        lines += ["", "![kNN top-1 per epoch](plots/comparison_knn_per_epoch.png)"]
    write("comparison.md", "\n".join(lines) + "\n")
    return written
