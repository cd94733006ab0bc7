"""Every method family through the real `raysl sweep` path (Ray Data views, Ray Train, Tune), cheaply:
tiny data, 2 epochs. MoCo / BYOL / W-MSE share one sweep (the method section is what is searched); LoGo
over MoCo and SimSiam runs on 2 Train workers (gloo), so Shuffle-BN and the key gather cross ranks.
SimCLR is covered by test_ray_integration.py."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_ray_integration import SMALL_RUN, raysl

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_address")]  # the session's shared Ray (conftest)


def leaderboard(experiment: Path) -> list[dict]:
    with open(experiment / "leaderboard.csv") as handle:
        return list(csv.DictReader(handle))


def last_state(experiment: Path, method_name: str) -> dict:
    for trial in [*experiment.glob("train/*"), *experiment.glob("trial_*")]:  # Ray Train's runs, in-trial loops
        checkpoints = sorted(path for path in trial.glob("checkpoint_*") if (path / "state.pt").is_file())
        if checkpoints:
            state = torch.load(checkpoints[-1] / "state.pt", map_location="cpu", weights_only=True)
            if state["config"]["method"]["name"] == method_name:
                return state
    raise AssertionError(f"no checkpoint of {method_name} under {experiment}")


def run_sweep(tmp_path: Path, name: str, base: dict, methods: list[dict], concurrent: int) -> Path:
    sweep = {
        "base": {**SMALL_RUN, **base, "epochs": 2},
        "search": {"method": {"grid": methods}},
        "scheduler": {"name": "fifo"},
        "max_concurrent_trials": concurrent,
        "storage_path": str(tmp_path / "results"),
        "name": name,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(sweep))
    result = raysl("sweep", str(path), cwd=tmp_path)
    return Path(result.stdout.strip().splitlines()[-1])


def test_moco_byol_wmse_sweep(tiny_dataset, tmp_path):
    methods = [
        {"name": "moco", "queue_size": 256, "temperature": 0.2, "shuffle_bn_groups": 2},
        {"name": "byol", "momentum": 0.99, "predictor_hidden": 32},
        {"name": "wmse", "w_size": 32},
    ]
    experiment = run_sweep(tmp_path, "families", {"data": {"path": tiny_dataset}, "optimizer": {"lr": 0.01}}, methods, 2)
    rows = leaderboard(experiment)
    assert len(rows) == 3
    for row in rows:
        assert row["status"] == "completed" and int(row["epochs"]) == 2, row
        assert float(row["knn_top1"]) > 0.5, row  # 10 classes: chance is 0.1
    # 2000 images / batch 64 = 31 steps an epoch; 62 steps x 64 keys = 3968 keys through a queue of 256.
    moco = last_state(experiment, "moco")
    assert int(moco["method"]["queue.pointer"]) == 3968 % 256
    assert moco["method"]["queue.keys"].shape == (16, 256)
    byol = last_state(experiment, "byol")
    assert any(key.startswith("target.") for key in byol["method"])


def test_logo_over_moco_and_simsiam_on_two_workers(tiny_dataset, tmp_path):
    base = {
        "data": {"path": tiny_dataset},
        "optimizer": {"lr": 0.01},
        "method": {"name": "logo-moco", "queue_size": 512},  # searched below; the base must be valid too
        "views": {"crops": [
            {"count": 2, "size": 28, "scale": [0.4, 1.0], "role": "global"},
            {"count": 2, "size": 14, "scale": [0.05, 0.4], "role": "local"},
        ]},
        "resources": {**SMALL_RUN["resources"], "workers": 2},
    }
    methods = [
        {"name": "logo-moco", "queue_size": 512, "temperature": 0.2, "shuffle_bn_groups": 2},
        {"name": "logo-simsiam", "predictor_hidden": 8},
    ]
    experiment = run_sweep(tmp_path, "logo", base, methods, 1)
    rows = leaderboard(experiment)
    assert len(rows) == 2
    for row in rows:
        assert row["status"] == "completed" and int(row["epochs"]) == 2, row
        assert float(row["knn_top1"]) > 0.3, row
    # Each step enqueues both global views' keys gathered from both ranks: 2 x 64 = 128 keys; 2000 images / global
    # batch 64 = 31 steps an epoch, 62 in 2 epochs: 7936 keys through a queue of 512 leave the pointer at 256
    # (a queue that enqueued one rank's keys, or one view's, or nothing, would stop elsewhere, or at 0).
    pointer = int(last_state(experiment, "logo-moco")["method"]["base.queue.pointer"])
    assert pointer == (2 * (2000 // 64) * 2 * 64) % 512 == 256
