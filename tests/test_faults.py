"""Fault handling that needs no Ray cluster: unreadable and hostile checkpoints, a loss that goes
non-finite through the CLI, and `raysl submit` refusing a bad sweep file before anything is sent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from raysl.cli import SUBMIT_EXCLUDES, build_parser, submit_command
from raysl.config import RunConfig
from raysl.report.experiment import error_status
from raysl.training.loop import CHECKPOINT_FILE, CheckpointError, Trainer

SMALL = {"model": {"width": 8, "projector_hidden": 32, "projector_out": 16}, "batch_size": 16, "epochs": 2}
REPO = Path(__file__).resolve().parents[1]


def _trainer() -> Trainer:
    return Trainer(RunConfig.model_validate(SMALL), 1, [0.5], [0.25], steps_per_epoch=2)


def test_a_truncated_checkpoint_is_an_error_naming_the_file(tmp_path):
    _trainer().save(tmp_path)
    data = (tmp_path / CHECKPOINT_FILE).read_bytes()
    (tmp_path / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"checkpoint s3://bucket/run/checkpoint_x/{CHECKPOINT_FILE} cannot be loaded"):
        _trainer().load(tmp_path, name="s3://bucket/run/checkpoint_x")
    with pytest.raises(CheckpointError, match="no such file"):
        _trainer().load(tmp_path / "missing")


class _Payload:
    """Pickles to a call of os.system: what a hostile 'checkpoint' in a shared bucket would hold."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"method": _Payload(marker)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        _trainer().load(tmp_path)
    assert not marker.exists(), "loading the checkpoint ran code"


def _raysl(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysl", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_non_finite_loss_in_the_cli_names_epoch_and_step_and_writes_no_checkpoint(tiny_dataset, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        **SMALL, "data": {"path": tiny_dataset}, "optimizer": {"name": "adamw", "lr": 1e6},
        "schedule": {"warmup_epochs": 0}, "storage_path": str(tmp_path / "results"), "name": "nan",
    }))
    done = _raysl("train", str(config), "--local")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "loss became nan at epoch 1, step" in done.stderr and "optimizer.lr" in done.stderr
    assert not (tmp_path / "results" / "nan" / CHECKPOINT_FILE).exists()


def test_submit_refuses_a_bad_sweep_before_contacting_the_cluster(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base:\n  optimizer: {lr: -1}\nsearch:\n  method.temperature: {grid: [0.1]}\n")
    # Nothing listens on port 9: had it tried to submit, the error would be a connection failure.
    done = _raysl("submit", str(bad), "--address", "http://127.0.0.1:9", cwd=tmp_path)
    assert done.returncode == 2
    assert "base.optimizer.lr" in done.stderr and "submitting" not in done.stdout


def test_submit_builds_the_documented_ray_job_submit_line():
    args = build_parser().parse_args(["submit", "sweeps/quickstart.yaml", "--address", "http://127.0.0.1:8265", "--smoke",
                                      "--set", "name=x"])
    command = submit_command(args)
    assert command[:5] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265"]
    assert command[command.index("--working-dir") + 1] == "."
    assert command[command.index("--") + 1:] == ["raysl", "sweep", "sweeps/quickstart.yaml", "--set", "name=x", "--smoke"]
    assert {"/results", "/data", "/.venv", "*.parquet"} <= set(SUBMIT_EXCLUDES)  # anchored: "data" would drop raysl/data/
    ignored = (REPO / ".rayignore").read_text().split()
    assert {"/results/", "/data/", "/.venv/", "*.parquet"} <= set(ignored)


def test_leaderboard_status_names_the_non_finite_epoch_and_step():
    error = "... NonFiniteLossError: loss became nan at epoch 3, step 41; the run stops here ..."
    assert error_status(error) == "failed: loss nan at epoch 3 step 41"
    assert error_status("Traceback ...\nCheckpointError: checkpoint x cannot be loaded") == "failed: CheckpointError"
