"""End to end on a real local Ray (dashboard on): a small ASHA sweep, the best config, kill and resume.

Slow (minutes): `pytest -m slow`. Each test drives the real CLI in a subprocess, as a user would.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import registered_checkpoint

ROOT = Path(__file__).resolve().parents[1]
# The session's shared Ray (conftest.ray_address): every raysl command here connects to it through RAY_ADDRESS.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_address")]

SMALL_RUN = {
    "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
    "batch_size": 64,
    "schedule": {"warmup_epochs": 0},
    "evaluation": {"knn_k": 20},
    "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "torch_threads": 1},
}


def raysl(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "raysl", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )
    assert result.returncode == 0, f"raysl {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def test_asha_sweep_end_to_end(tiny_dataset, tmp_path):
    # Trials 3 and 4 barely move their weights (lr 1e-7), so their kNN stays at the random-init level
    # while trials 1 and 2 learn the data: ASHA must stop 3 and 4 at the first rung.
    sweep = {
        "base": {**SMALL_RUN, "data": {"path": tiny_dataset}, "epochs": 3},
        "search": {"optimizer.lr": {"grid": [0.01, 0.02, 1e-7, 2e-7]}},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": 2,
        "storage_path": "results",  # relative to where the user runs raysl, not to a trial's working dir
        "name": "it",
    }
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(sweep))
    result = raysl("sweep", str(sweep_file), cwd=tmp_path)
    experiment = Path(result.stdout.strip().splitlines()[-1])
    assert experiment == tmp_path / "results" / "it"
    for row_trial in ("00000", "00001"):
        # one worker: each trial runs its loop itself, its checkpoints in its own directory (trial_loop auto)
        assert list(experiment.glob(f"trial_*_{row_trial}/checkpoint_*")), "checkpoints not in the trial directories"

    with open(experiment / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4 and {"trial", "optimizer.lr", "knn_top1", "epochs", "status"} <= set(rows[0])
    by_lr = {float(row["optimizer.lr"]): row for row in rows}
    assert by_lr[1e-7]["status"] == by_lr[2e-7]["status"] == "stopped early (ASHA)"
    stops = json.loads((experiment / "asha_stops.json").read_text())  # what tells ASHA's stops from a time budget's
    assert stops == {by_lr[1e-7]["trial"]: 1, by_lr[2e-7]["trial"]: 1}
    assert int(by_lr[1e-7]["epochs"]) == 1
    assert by_lr[0.01]["status"] == "completed" and int(by_lr[0.01]["epochs"]) == 3
    assert float(rows[0]["knn_top1"]) > 0.9

    trial_dirs = sorted(experiment.glob("trial_*"))
    assert len(trial_dirs) == 4
    for trial_dir in trial_dirs:
        with open(trial_dir / "progress.csv") as handle:
            progress = list(csv.DictReader(handle))
        assert progress and all(row["knn_top1"] not in ("", None) for row in progress)  # kNN every epoch
        assert [int(row["training_iteration"]) for row in progress] == list(range(1, len(progress) + 1))
        assert list(trial_dir.glob("events.out.tfevents*")), f"no TensorBoard events in {trial_dir}"

    exported = json.loads((experiment / "best_backbone" / "model.json").read_text())  # the best trial's backbone
    assert exported["checkpoint"].startswith(str(experiment / f"trial_{rows[0]['trial']}"))
    raysl("export", str(experiment), "--out", str(tmp_path / "from-experiment"))
    assert json.loads((tmp_path / "from-experiment" / "model.json").read_text())["checkpoint"] == exported["checkpoint"]
    best = experiment / "best_config.yaml"
    assert float(yaml.safe_load(best.read_text())["optimizer"]["lr"]) in (0.01, 0.02)
    trained = raysl("train", str(best), "--set", "epochs=1", "--set", f"storage_path={tmp_path / 'best'}")
    assert "knn_top1" in trained.stdout and trained.stdout.strip().splitlines()[-1].startswith(str(tmp_path / "best"))


def test_killed_run_resumes_at_the_next_epoch(tiny_dataset, tmp_path):
    run = {**SMALL_RUN, "data": {"path": tiny_dataset}, "epochs": 4, "storage_path": str(tmp_path), "name": "killme"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(run))
    command = [sys.executable, "-m", "raysl", "train", str(config)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    # Kill once Ray Train has registered a checkpoint (its snapshot names one), not merely when a checkpoint
    # directory appears: epochs take ~1 s here, and a directory can exist before the controller records it.
    while not registered_checkpoint(tmp_path / "killme") and time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.2)
    assert process.poll() is None, "the run finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    checkpoints_at_kill = len(list((tmp_path / "killme").glob("checkpoint_*")))
    assert checkpoints_at_kill >= 1

    resumed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert "epoch 1/4" not in output, "the resumed run started again from scratch"
    assert "epoch 4/4" in output
    assert "done: 4 epochs" in resumed.stdout
