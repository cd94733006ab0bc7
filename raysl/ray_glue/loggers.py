"""Tune's logger callbacks as raysl uses them: TensorBoard scalars only (hparams are raysl's own), and result.json /
progress.csv that keep the driver's copy when Tune restarts a trial within a run (a PBT exploit, a retry).

Imports nothing of raysl.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback


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


class RestoreHint(logging.Filter):
    """Drops Tune's `Tuner.restore(path=..., trainable=...)` hint: raysl prints its own `--resume` command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage() and "Trials did not complete" not in record.getMessage()
