"""The sweep's live view, a Ray Tune progress reporter. On a terminal: one table redrawn in place (trials, swept
values, the sweep's metric, epochs, status, and the sweep's ETA). Elsewhere (a log file, `ray job submit`): one
line per trial event (started, an epoch reported, stopped, failed), nothing in between.

Tune calls `should_report` / `report` from its loop on the driver; the reporter is pickled with the experiment
(so a resumed sweep keeps it) and holds no stream: it prints to sys.stdout when it reports.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any

from ray.tune import ProgressReporter

from raysl.report.experiment import error_cause

STATUS = {"PENDING": "pending", "RUNNING": "running", "PAUSED": "paused", "TERMINATED": "stopped", "ERROR": "failed"}


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def interactive_output() -> bool:
    """Redraw in place only on a real terminal (not a pipe, a file, `ray job submit`'s log, or TERM=dumb)."""
    return sys.stdout.isatty() and os.environ.get("TERM", "") != "dumb"


class LiveView(ProgressReporter):
    def __init__(self, *, search_keys: list[str], metric: str, mode: str, max_epochs: int, trial_count: int,
                 time_budget_s: float | None, interactive: bool, refresh_s: float = 2.0, log_path: str | None = None):
        self.search_keys, self.metric, self.mode = search_keys, metric, mode
        self.max_epochs, self.trial_count, self.time_budget_s = max_epochs, trial_count, time_budget_s
        self.interactive, self.refresh_s = interactive, refresh_s
        self.log_path = log_path  # Ray's output; a failed trial's line names it
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn_lines = 0
        self._seen: dict[str, tuple[str, int]] = {}  # trial id -> (status, epoch) last reported
        self._started: set[str] = set()  # trials said to have started
        self._best: dict[str, float] = {}  # trial id -> best metric so far

    def setup(self, start_time: float | None = None, total_samples: int | None = None, **kwargs) -> None:
        self._start = time.monotonic()  # this run of the sweep (a resumed one starts its clock again)
        self.trial_count = total_samples or self.trial_count

    def __setstate__(self, state: dict[str, Any]) -> None:  # restored with the experiment: a fresh screen
        self.__dict__.update(state)
        self._drawn_lines = 0

    # --------------------------------------------------------------------------------------------- state

    def _epoch(self, trial) -> int:
        return int((trial.last_result or {}).get("epoch", 0) or 0)

    def _update_best(self, trial) -> float | None:
        value = (trial.last_result or {}).get(self.metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            previous = self._best.get(trial.trial_id)
            better = previous is None or (value > previous if self.mode == "max" else value < previous)
            if better:
                self._best[trial.trial_id] = float(value)
        return self._best.get(trial.trial_id)

    def _eta(self, trials) -> str:
        """From the trial-epochs done so far against the most the sweep can still run (ASHA stops make it less);
        the time budget caps it."""
        elapsed = time.monotonic() - self._start
        done = sum(min(self._epoch(trial), self.max_epochs) for trial in trials)
        finished = sum(1 for trial in trials if trial.status in ("TERMINATED", "ERROR"))
        remaining = sum(self.max_epochs - min(self._epoch(trial), self.max_epochs)
                        for trial in trials if trial.status not in ("TERMINATED", "ERROR"))
        remaining += max(self.trial_count - len(trials), 0) * self.max_epochs
        text = f"{_duration(elapsed)} elapsed, {finished}/{self.trial_count} trials done"
        estimates = []
        if done and remaining:
            estimates.append(elapsed / done * remaining)
        if self.time_budget_s:
            estimates.append(self.time_budget_s - elapsed)
        return text + (f", at most ~{_duration(min(estimates))} to go" if estimates and remaining else "")

    # --------------------------------------------------------------------------------------------- Tune's API

    def should_report(self, trials, done: bool = False) -> bool:
        for trial in trials:
            self._update_best(trial)
        if self.interactive:
            return done or time.monotonic() - self._last_draw >= self.refresh_s
        return any(self._seen.get(trial.trial_id) != (trial.status, self._epoch(trial)) for trial in trials) or done

    def report(self, trials, done: bool, *sys_info: str) -> None:
        if self.interactive:
            self._draw(trials)
        else:
            for line in self._events(trials):
                print(line, flush=True)
        self._last_draw = time.monotonic()

    # --------------------------------------------------------------------------------------------- output

    def _values(self, trial) -> str:
        search = (trial.config or {}).get("search", {})
        return ", ".join(f"{key.rsplit('.', 1)[-1]}={_text(search.get(key))}" for key in self.search_keys)

    def _events(self, trials) -> list[str]:
        lines = []
        for trial in sorted(trials, key=lambda trial: trial.trial_id):
            status, epoch = trial.status, self._epoch(trial)
            before = self._seen.get(trial.trial_id)
            if before == (status, epoch):
                continue
            self._seen[trial.trial_id] = (status, epoch)
            result = trial.last_result or {}
            if before is None and status == "PENDING":
                continue  # not started yet: said when it starts
            if before is None or (before[0] != "RUNNING" and status == "RUNNING"):
                if trial.trial_id in self._started:  # a PBT exploit, or a retry after a failure
                    lines.append(f"trial {trial.trial_id} restarted from a checkpoint: {self._values(trial)}")
                else:
                    lines.append(f"trial {trial.trial_id} started: {self._values(trial)}")
                self._started.add(trial.trial_id)
            if epoch and (before is None or epoch != before[1]):
                lines.append(f"trial {trial.trial_id} epoch {epoch}/{self.max_epochs}: {self.metric} "
                             f"{_text(result.get(self.metric))} (best {_text(self._best.get(trial.trial_id))}), "
                             f"loss {_text(result.get('loss'))}, {_text(result.get('images_per_s'))} img/s")
            if status in ("TERMINATED", "ERROR") and (before is None or before[0] != status):
                ended = "failed" if status == "ERROR" else "completed" if epoch >= self.max_epochs else "stopped"
                line = f"trial {trial.trial_id} {ended} after {epoch} epoch{'s' if epoch != 1 else ''}"
                if status == "ERROR":
                    line += f": {self._cause(trial)}"
                lines.append(f"{line} ({self._eta(trials)})")
        return lines

    def _cause(self, trial) -> str:
        """Why a trial failed, in one line (its error.txt; Ray's traces stay there and in the sweep's log)."""
        try:
            text = trial.get_error()
        except Exception:  # the error file not on storage (yet)
            text = None
        where = f"error.txt in trial_{trial.trial_id}" + (f", Ray's output in {self.log_path}" if self.log_path else "")
        return f"{error_cause(text)} ({where})" if text else f"see {where}"

    def _draw(self, trials) -> None:
        header = ["trial", *(key.rsplit(".", 1)[-1] for key in self.search_keys), f"best {self.metric}", "epochs", "status"]
        rows = []
        for trial in sorted(trials, key=lambda trial: trial.trial_id):
            search = (trial.config or {}).get("search", {})
            rows.append([trial.trial_id, *(_text(search.get(key)) for key in self.search_keys),
                         _text(self._best.get(trial.trial_id)), f"{self._epoch(trial)}/{self.max_epochs}",
                         STATUS.get(trial.status, trial.status.lower())])
        widths = [max(len(line[index]) for line in [header, *rows]) for index in range(len(header))]
        lines = [self._eta(trials), "  ".join(cell.ljust(width) for cell, width in zip(header, widths))]
        lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows]
        # back to where the last table started, clear below it, draw the new one
        prefix = f"\x1b[{self._drawn_lines}F\x1b[J" if self._drawn_lines else ""
        sys.stdout.write(prefix + "\n".join(lines) + "\n")
        sys.stdout.flush()
        self._drawn_lines = len(lines)
