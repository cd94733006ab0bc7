"""How a sweep ends, as a user meets it: cut by its time budget, or Ctrl-C then `--resume`; every trial in
TensorBoard's HParams view either way; the README's Python API example; the `ray job submit` storage warning.

The sweeps are slow (real Ray, minutes): `pytest -m slow`. They drive the CLI in a subprocess, as a user would.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raysl.api import warn_job_storage
from raysl.cli import main
from raysl.errors import UserError
from raysl.report.tensorboard import HPARAMS_FILE
from tests.test_ray_integration import SMALL_RUN
from tests.test_report import hparams_of

ROOT = Path(__file__).resolve().parents[1]


def _sweep_file(tmp_path: Path, data: str, **settings) -> Path:
    sweep = {
        "base": {**SMALL_RUN, "data": {"path": data}, "epochs": settings.pop("epochs")},
        "search": {"optimizer.lr": {"grid": [0.01, 0.02]}},
        "scheduler": {"name": "fifo"},
        "max_concurrent_trials": 1,
        "storage_path": str(tmp_path / "results"),
        "name": "ends",
        **settings,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def _leaderboard(experiment: Path) -> dict[str, dict[str, str]]:
    with open(experiment / "leaderboard.csv") as handle:
        return {row["trial"]: row for row in csv.DictReader(handle)}


@pytest.mark.slow
def test_a_sweep_cut_by_its_time_budget_says_so_and_every_trial_has_hparams(tiny_dataset, tmp_path, ray_address):
    sweep = _sweep_file(tmp_path, tiny_dataset, epochs=500, time_budget_minutes=2.0, max_concurrent_trials=2,
                        scheduler={"name": "asha", "grace_period": 100})
    result = subprocess.run([sys.executable, "-m", "raysl", "sweep", str(sweep)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    experiment = Path(result.stdout.strip().splitlines()[-1])
    rows = _leaderboard(experiment)
    assert len(rows) == 2
    for row in rows.values():  # both were running when the budget ran out (ASHA's first rung is at epoch 100)
        assert re.fullmatch(r"stopped by the time budget \(epoch \d+\)", row["status"]) and int(row["epochs"]) >= 1, row
        assert row["status"] in result.stdout  # the printed leaderboard says the same
    assert json.loads((experiment / "asha_stops.json").read_text()) == {}
    first = min(rows)
    for trial, row in rows.items():  # Tune writes hparams only for trials that complete or fail
        seen = hparams_of(experiment / f"trial_{trial}")
        assert seen["status"] == row["status"] and seen["optimizer.lr"] == pytest.approx(float(row["optimizer.lr"]))
    assert hparams_of(experiment / f"trial_{first}")["raysl/best_knn_top1"] == pytest.approx(float(rows[first]["knn_top1"]))
    assert "Tuner.restore" not in result.stdout + result.stderr


def _first_epoch_reported(experiment: Path) -> bool:
    return any(path.read_text().strip() for path in experiment.glob("trial_*/result.json"))


@pytest.mark.slow
def test_ctrl_c_exits_130_marks_trials_interrupted_and_resume_finishes_them(tiny_dataset, tmp_path, ray_address):
    sweep = _sweep_file(tmp_path, tiny_dataset, epochs=6)
    experiment = tmp_path / "results" / "ends"
    process = subprocess.Popen([sys.executable, "-m", "raysl", "sweep", str(sweep)], cwd=tmp_path, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not _first_epoch_reported(experiment) and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C in a terminal: the whole foreground process group
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 130, output[-3000:]
    lines = output.strip().splitlines()
    assert lines[-1].strip() == shlex.join(["raysl", "sweep", str(sweep), "--resume"]), lines[-5:]
    assert "Tuner.restore" not in output
    rows = _leaderboard(experiment)
    # One trial at a time: Tune had not created the second yet, and the leaderboard still lists it.
    created = {trial: row for trial, row in rows.items() if not trial.startswith("not-created")}
    (first,) = created
    assert len(rows) == 2 and [row["status"] for trial, row in rows.items() if trial not in created] == ["not started (interrupted)"]
    assert re.fullmatch(r"interrupted \(epoch [1-5]\)", rows[first]["status"]), rows[first]
    assert "stopped early" not in output
    for trial, row in created.items():
        assert hparams_of(experiment / f"trial_{trial}")["status"] == row["status"]
    interrupted_at = int(rows[first]["epochs"])

    command = shlex.split(lines[-1])
    resumed = subprocess.run([sys.executable, "-m", "raysl", *command[1:]], capture_output=True, text=True,
                             cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert Path(resumed.stdout.strip().splitlines()[-1]) == experiment  # the same experiment, the same trials
    rows = _leaderboard(experiment)
    assert len(rows) == 2 and first in rows and {row["status"] for row in rows.values()} == {"completed"}
    reports = [json.loads(line) for line in (experiment / f"trial_{first}" / "result.json").read_text().splitlines()]
    assert reports[-1]["epoch"] == 6 and reports[-1]["resumed_at_epoch"] >= interrupted_at  # from its checkpoint
    for trial in rows:
        assert hparams_of(experiment / f"trial_{trial}")["status"] == "completed"
        for events in (experiment / f"trial_{trial}").glob("events.out.tfevents*"):  # Tune's own: scalars only
            if events.name != HPARAMS_FILE:
                assert not _plugin_tags(events, "hparams"), f"Tune wrote hparams too: {events}"


def _plugin_tags(events: Path, plugin: str) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(str(events))
    reader.Reload()
    try:
        return reader.PluginTagToContent(plugin)
    except KeyError:
        return {}


@pytest.mark.slow
def test_a_trial_whose_loss_goes_nan_fails_alone_without_a_checkpoint_in_its_own_loop(tiny_dataset, tmp_path, ray_address):
    sweep = _sweep_file(tmp_path, tiny_dataset, epochs=2, max_concurrent_trials=2,
                        search={"optimizer.lr": {"grid": [0.01, 1e6]}})
    result = subprocess.run([sys.executable, "-m", "raysl", "sweep", str(sweep)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]  # one trial failed, not the sweep
    experiment = Path(result.stdout.strip().splitlines()[-1])
    rows = {float(row["optimizer.lr"]): row for row in _leaderboard(experiment).values()}
    assert rows[0.01]["status"] == "completed" and rows[0.01]["epochs"] == "2"
    assert rows[1e6]["status"].startswith("failed: loss nan at epoch 1 step "), rows[1e6]
    failed = experiment / f"trial_{rows[1e6]['trial']}"  # the loop ran in the trial: its markers are there
    assert "loss became nan at epoch 1, step" in (failed / "nonfinite.txt").read_text()
    assert not list(failed.glob("checkpoint_*")), "a checkpoint was written after the loss went non-finite"
    assert list((experiment / f"trial_{rows[0.01]['trial']}").glob("checkpoint_*"))
    assert not (experiment / "train").exists()  # no TorchTrainer ran


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (example,) = [block for block in blocks if "raysl.sweep(" in block]
    return example


@pytest.mark.slow
def test_the_readmes_python_api_example_runs(fashion_mnist, tmp_path, monkeypatch):  # an error without it under CI
    example = _readme_example()
    assert len(example.strip().splitlines()) <= 12
    (tmp_path / "sweeps").symlink_to(ROOT / "sweeps")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert result.experiment_dir == str(tmp_path / "results" / "quickstart")
    assert len(result.leaderboard) == 2 and set(result.leaderboard["status"]) == {"completed"}
    assert result.best_config.method.temperature == result.leaderboard.iloc[0]["method.temperature"]
    assert Path(result.best_checkpoint, "state.pt").is_file() and not result.interrupted
    assert namespace["backbone"].out_dim > 0
    summary = namespace["embeddings"]
    assert summary["splits"] == {"test": 10000} and summary["feature_dim"] == namespace["backbone"].out_dim
    run = namespace["run"]
    assert run.metrics["epoch"] == 1 and Path(run.checkpoint, "state.pt").is_file() and Path(run.path).is_dir()


def test_a_relative_storage_path_under_ray_job_submit_is_warned_or_refused(monkeypatch, tmp_path, tiny_dataset, capsys):
    job = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}, "metadata": {}})
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", job)
    monkeypatch.chdir(tmp_path)
    notes: list[str] = []
    warn_job_storage("./results", "storage_path", log=notes.append)
    assert len(notes) == 1 and "Ray deletes after the job" in notes[0] and "s3://" in notes[0]
    for safe in ("s3://bucket/results", "/shared/results"):
        notes.clear()
        warn_job_storage(safe, "storage_path", log=notes.append)
        assert notes == []
    with pytest.raises(UserError, match="storage_path './results' is inside this job's working directory"):
        warn_job_storage("./results", "storage_path", strict=True)
    sweep = _sweep_file(tmp_path, tiny_dataset, epochs=1, storage_path="results")
    assert main(["sweep", str(sweep), "--strict-storage"]) == 2  # refused before Ray starts
    assert "inside this job's working directory" in capsys.readouterr().err
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    notes.clear()
    warn_job_storage("./results", "storage_path", log=notes.append)  # not under a job: nothing to say
    assert notes == []
