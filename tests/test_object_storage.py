"""Data and results on object storage, against a real S3 server on loopback (moto's, from PyPI):
`raysl prepare --out s3://`, a sweep reading that data with `storage_path: s3://` (leaderboard, best
config and checkpoints written there, `--resume` from there), and a run resumed from its S3 checkpoint."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_idx_source, moto_s3, ray_head

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BUCKET = "raysl-test"


@pytest.fixture(scope="module")
def s3():
    """The S3 server, and one Ray head started inside its environment (its workers inherit the endpoint and the
    keys) that every raysl command here connects to, instead of an embedded Ray each."""
    with moto_s3(BUCKET) as env, ray_head() as address, pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_ADDRESS", address)
        yield {**env, "RAY_ADDRESS": address}


def keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def read(key: str) -> str:
    import boto3

    return boto3.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()


def raysl(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    # RAY_ADDRESS: the module's Ray head (the s3 fixture's, not the session's shared one), whose workers have the
    # S3 server's environment
    assert os.environ["RAY_ADDRESS"]
    done = subprocess.run([sys.executable, "-m", "raysl", *args], capture_output=True, text=True, timeout=900, cwd=cwd)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


@pytest.mark.timeout(1500)  # eight raysl commands, four of them on Ray
def test_prepare_sweep_checkpoints_and_resume_on_s3(s3, tmp_path):
    data = f"s3://{BUCKET}/data/tiny"
    raysl("prepare", "mnist", str(make_idx_source(tmp_path / "idx", train=2000, test=300)), "--out", data, "--no-progress")
    assert "data/tiny/manifest.json" in keys("data/tiny/") and any(k.endswith(".parquet") for k in keys("data/tiny/train"))

    base = {
        "data": {"path": data},
        "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
        "optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"warmup_epochs": 0},
        "epochs": 2, "batch_size": 64, "evaluation": {"bank_limit": 1000, "query_limit": 300},
        "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "torch_threads": 1},
    }
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump({
        "base": base, "search": {"optimizer.lr": {"grid": [0.01, 0.003]}}, "scheduler": {"name": "fifo"},
        "max_concurrent_trials": 2, "storage_path": f"s3://{BUCKET}/results", "name": "tiny",
    }))
    done = raysl("sweep", str(sweep))
    experiment = f"s3://{BUCKET}/results/tiny"
    assert done.stdout.strip().splitlines()[-1] == experiment
    rows = list(csv.DictReader(io.StringIO(read("results/tiny/leaderboard.csv"))))
    assert len(rows) == 2 and all(row["status"] == "completed" and row["epochs"] == "2" for row in rows)
    assert "knn_top1" in read("results/tiny/best_config.yaml")
    for row in rows:  # one worker: each trial ran its loop itself, its checkpoints in its own trial_<id> directory
        assert [k for k in keys(f"results/tiny/trial_{row['trial']}/") if k.endswith("/state.pt")], row["trial"]
    # The report, built at the sweep's end, is on S3 too.
    assert {"results/tiny/leaderboard.md", "results/tiny/plots/knn_per_epoch.png"} <= set(keys("results/tiny/"))
    assert "2 completed" in read("results/tiny/leaderboard.md")
    # No best_backbone/ on object storage: the sweep prints the `raysl export` command, and that command works.
    (printed,) = [line for line in done.stdout.splitlines() if line.startswith("best backbone: ")]
    assert printed == f"best backbone: raysl export {experiment} --out best_backbone"
    assert not [k for k in keys("results/tiny/best_backbone/")]
    command = shlex.split(printed.removeprefix("best backbone: "))
    raysl(*command[1:], cwd=tmp_path)
    exported = json.loads((tmp_path / "best_backbone" / "model.json").read_text())
    assert exported["checkpoint"].startswith(f"{experiment}/trial_{rows[0]['trial']}/checkpoint_"), exported["checkpoint"]

    # raysl eval on a checkpoint in S3 (the trial's run directory: its newest checkpoint) writes eval.json beside it.
    evaluated = raysl("eval", f"{experiment}/trial_{rows[0]['trial']}", "--set", "evaluation.budgets=[5, all]",
                      "--set", "evaluation.probe.epochs=3")
    written = evaluated.stdout.strip().splitlines()[-1]
    assert written.startswith(f"{experiment}/trial_{rows[0]['trial']}/checkpoint_") and written.endswith("/eval.json")
    results = json.loads(read(written.removeprefix(f"s3://{BUCKET}/")))["results"]
    assert [(row["budget"], row["bank_size"]) for row in results] == [("5-per-class", 50), ("all", 1000)]

    again = raysl("sweep", str(sweep), "--resume")  # restores the finished experiment from S3: nothing re-run
    assert f"resuming sweep at {experiment}" in again.stdout
    assert not re.search(r"\] epoch \d+/2", again.stdout + again.stderr)

    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({**base, "epochs": 1, "storage_path": f"s3://{BUCKET}/runs", "name": "one"}))
    raysl("train", str(run))
    assert [k for k in keys("runs/one/") if k.endswith("/state.pt")]
    longer = raysl("train", str(run), "--set", "epochs=2")
    assert re.search(r"done: 2 epochs, .* resumed from the checkpoint of epoch 1\)", longer.stdout), longer.stdout[-2000:]
