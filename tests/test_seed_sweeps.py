"""The seed setups as sweep files: sweeps/imagenet100-moco.yaml and imagenet100-logo-moco.yaml validate as
shipped (ResNet-18, 224 px, GPU workers, CPU augmentation nodes), and run with --smoke through real Ray on
the generated variable-size folder, with no --set but the data and storage: --smoke fits the GPU workers, node
labels and crop sizes to this machine (2 cores, no GPU) and says so in one line. The --smoke runs take minutes each: marked `cluster` (`make test-cluster`)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from raysl.config import load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ["imagenet100-moco.yaml", "imagenet100-logo-moco.yaml"]
@pytest.mark.parametrize("name", SEEDS)
def test_seed_sweeps_validate_as_shipped(name):
    sweep = load_sweep_config(ROOT / "sweeps" / name)
    base = sweep.base
    assert base.model.backbone == "resnet18" and base.model.stem == "imagenet"
    assert base.views.crops[0].size == 224 and base.evaluation.image_size == 224
    assert base.resources.gpus_per_worker == 1 and base.resources.train_on and base.resources.augment_on
    assert base.optimizer.name == "sgd" and base.optimizer.lr_scaling == "linear"
    assert base.optimizer.scaled_lr(base.batch_size) == pytest.approx(0.03)  # MoCo v2: 0.03 per 256 images
    if "logo" in name:
        assert base.method.ll_weight == 0.0005 and base.views.crops[1].size == 96
    result = subprocess.run([sys.executable, "-m", "raysl", "validate", str(ROOT / "sweeps" / name)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "valid sweep config" in result.stdout


@pytest.mark.slow
@pytest.mark.cluster  # minutes each (ResNet-18 on 64 px crops, a final evaluation): `make test-cluster`, not `make test`
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("name", SEEDS)
def test_seed_sweeps_run_with_smoke_on_the_generated_folder(name, encoded_dataset, tmp_path, ray_address):
    overrides = [f"base.data.path={encoded_dataset}", f"storage_path={tmp_path / 'results'}"]
    args = [sys.executable, "-m", "raysl", "sweep", str(ROOT / "sweeps" / name), "--smoke"]
    for override in overrides:
        args += ["--set", override]
    result = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-4000:]}"
    assert sum(line.startswith("--smoke: fitted to this machine") for line in result.stdout.splitlines()) == 1
    experiment = Path(result.stdout.strip().splitlines()[-1])
    with open(experiment / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 and all(row["status"] == "completed" for row in rows)
    trials = sorted(experiment.glob("trial_*"))
    assert len(trials) == 2
    for row in rows:
        result_lines = (experiment / f"trial_{row['trial']}" / "result.json").read_text().splitlines()
        last = json.loads(result_lines[-1])
        assert last["knn_epoch"] == 1 and "eval/prepared:label/all/probe_top1" in last  # evaluation.final
        # one smoke epoch of ResNet-18 need not beat chance here; the leaderboard must hold the trial's own figure
        assert float(row["knn_top1"]) == pytest.approx(last["knn_top1"], abs=1e-4) and 0.0 <= last["knn_top1"] <= 1.0
