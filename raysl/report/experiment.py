"""An experiment directory read back: what Ray Tune and raysl leave there (sweep.yaml, the newest
experiment_state-*.json, per trial params.json, result.json, error.txt), local or on object storage, as
Trials with a status each (finished, stopped by ASHA or the budget, failed naming why, interrupted, not started).

Imports raysl.config, raysl.io and raysl.errors.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from raysl.config import ASHAConfig, SweepConfig
from raysl.errors import UserError, out_of_memory
from raysl.io.storage import exists, list_dirs, list_files, read_text

METRIC = "knn_top1"
SET_PREFIX = f"{METRIC}/"
EVAL_ALL = re.compile(r"eval/([^/]+)/all/(\w+)")
FAILED_LOSS = re.compile(r"loss became (\S+) at epoch (\d+), step (\d+)")
ERROR_NAME = re.compile(r"\b(\w+(?:Error|Exception))\b")


# How the last `raysl sweep` of this experiment ended: {"ended": "finished" | "interrupted"}. Written when the
# fit returns, removed when one starts: trials Tune's state still calls RUNNING without it belong to a sweep
# that is live or whose driver was killed.
ENDING_FILE = "sweep_end.json"


# {trial_id: epoch} of the trials ASHA stopped early. Tune marks those and the trials a time budget cut alike
# (TERMINATED); a TERMINATED trial short of its epochs that ASHA did not stop was cut by the budget.
ASHA_STOPS = "asha_stops.json"


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
        return [(int(row["epoch"]), row[METRIC]) for row in self.rows if finite(row.get(METRIC)) is not None
                and int(finite(row.get("knn_epoch")) or row["epoch"]) == int(row["epoch"])]

    @property
    def best(self) -> float | None:
        return max((value for _, value in self.knn), default=None)

    @property
    def final(self) -> float | None:
        """The last epoch's knn_top1."""
        return finite(self.last.get(METRIC))

    def score(self, metric: str, mode: str) -> float | None:
        """The trial's best `metric` over its epochs (knn_top1: measured epochs only); None: never reported."""
        if metric == METRIC:
            values = [value for _, value in self.knn]
        else:
            values = [value for row in self.rows if (value := finite(row.get(metric))) is not None]
        return (max if mode == "max" else min)(values, default=None)

    @property
    def seconds(self) -> float | None:
        """Wall seconds the trial ran (Tune's time_total_s: over every attempt, resumed ones too)."""
        return finite(self.last.get("time_total_s"))

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


ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?(\w+(?:Error|Exception))(?:\([^)]*\))?: ?(.*)$")
SENTINELS = ("DamagedShardError", "NonFiniteLossError", "CheckpointError", "UserError")  # raysl's own: their text says it all


def error_cause(text: str) -> str:
    """A failed trial's cause in one line, from its error text (a traceback, or Ray's wrapping of one): raysl's own
    error's message when one is in it (it names the file, field or shard and what to do), else the last error line,
    without module paths or frames."""
    if advice := out_of_memory(text or ""):
        return advice
    lines = [line.rstrip() for line in (text or "").splitlines()]
    found = []  # (index, type name, message start)
    for index, line in enumerate(lines):
        match = ERROR_LINE.match(line.strip())
        if match and not line.startswith((" ", "\t")):
            found.append((index, match[1], match[2]))
    if not found:
        rest = [line.strip() for line in lines if line.strip()]
        return rest[-1] if rest else "failed"
    ours = [item for item in found if item[1] in SENTINELS]
    index, name, start = (ours or found)[-1]
    message = [start.strip()] + [line.strip() for line in lines[index + 1:] if line.strip() and not ERROR_LINE.match(line.strip())]
    text = " ".join(part for part in message if part)
    return text if name in SENTINELS and text else f"{name}: {text}" if text else name


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


def finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None

