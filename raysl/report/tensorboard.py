"""TensorBoard's hparams view for every trial however it ended: one event file per trial with its searched values
and final figures.

Imports raysl.report.experiment and raysl.io.
"""

from __future__ import annotations

import json
import os
from typing import Any

from raysl.io.storage import write_bytes
from raysl.report.experiment import Experiment

# A trial's TensorBoard hparams (HParams view), one file per trial, rewritten by each report. Named to sort before
# Tune's timestamped event files: TensorBoard follows only a run's last file by name, which must stay Tune's.
HPARAMS_FILE = "events.out.tfevents.0000000000.raysl-hparams"


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
