"""Config: every kind of malformed file is rejected before Ray starts, naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from raysl.config import RunConfig, apply_assignment, load_run_config, load_sweep_config
from raysl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def rejected(path: Path, *fragments: str, overrides=None, loader=load_sweep_config) -> str:
    with pytest.raises(UserError) as caught:
        loader(path, overrides)
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return message


GOOD = """
base:
  epochs: 3
  method: {name: simclr, temperature: 0.5}
search:
  method.temperature: {loguniform: [0.05, 1.0]}
  optimizer.lr: {grid: [0.001, 0.01]}
scheduler: {name: asha, grace_period: 1}
num_samples: 2
"""


def test_shipped_sweep_files_validate():
    for path in sorted((ROOT / "sweeps").glob("*.yaml")):
        load_sweep_config(path)
        load_sweep_config(path, smoke=True)


def test_good_file_loads_with_defaults_in_one_place(tmp_path):
    sweep = load_sweep_config(write(tmp_path, GOOD))
    assert sweep.base.epochs == 3 and sweep.base.batch_size == RunConfig().batch_size
    assert sweep.search["optimizer.lr"].grid == [0.001, 0.01]


@pytest.mark.parametrize(
    "text, fragments",
    [
        ("", ["empty"]),
        ("base: [1, 2\n", ["YAML syntax error", "line"]),
        ("- base\n- search\n", ["mapping", "list"]),
        ("base:\n  - epochs\n", ["base", "valid dictionary"]),
        ("base:\n  epochs: 3\n  optimizer: {lr: 0.1, momentun: 0.9}\n", ["base.optimizer.momentun", "unknown field"]),
        ("base:\n  views:\n    crops:\n      - {count: 2, size: 28, scal: [0.2, 1]}\n", ["base.views.crops.0.scal", "unknown field"]),
        ("base:\n  epochs: three\n", ["base.epochs", "integer"]),
        ("base:\n  epochs: 0\n", ["base.epochs", "greater than or equal to 1"]),
        ("base:\n  method: {name: mocov9}\n", ["base.method.name", "simclr"]),
        ("base:\n  method: {temperature: -1}\n", ["base.method.temperature", "greater than 0"]),
        ("base:\n  views: {crops: [{count: 2, scale: [0.9, 0.2]}]}\n", ["base.views.crops.0", "exceeds"]),
        ("base:\n  views: {crops: [{count: 3}]}\n", ["simclr needs exactly 2 views"]),
        ("search:\n  method.temprature: {uniform: [0.1, 0.5]}\n", ["search.method.temprature", "names no config field", "method.temperature"]),
        ("search:\n  method.temperature: {uniform: [0.0, 0.5]}\n", ["search.method.temperature", "0.0", "greater than 0"]),
        ("search:\n  optimizer.name: {choice: [adamw, adam]}\n", ["search.optimizer.name", "'adam'"]),
        ("search:\n  method.temperature: {uniform: [0.1, 0.5], choice: [1]}\n", ["search.method.temperature", "exactly one"]),
        ("search:\n  method.temperature: {normal: [0.1, 0.5]}\n", ["search.method.temperature.normal", "unknown field"]),
        ("search:\n  resources.workers: {grid: [1, 2]}\n", ["search.resources.workers", "cannot be searched"]),
        ("search:\n  batch_size: {choice: [256, 258]}\nbase: {resources: {workers: 4}}\n", ["batch_size=258", "multiple of resources.workers"]),
        ("scheduler: {name: hyperband}\n", ["scheduler", "hyperband"]),
        ("scheduler: {name: asha, grace_period: 5}\nbase: {epochs: 2}\n", ["grace_period 5 exceeds max_t 2"]),
        ("num_samples: 0\n", ["num_samples", "greater than or equal to 1"]),
        ("bogus: 1\n", ["bogus", "unknown field"]),
        ("epochs: 3\n", ["epochs: unknown field", "go under base:, e.g. base.epochs"]),
    ],
)
def test_malformed_sweep_files_name_the_field(tmp_path, text, fragments):
    rejected(write(tmp_path, text), *fragments)


def test_search_values_are_checked_in_combination(tmp_path):
    path = write(tmp_path, """
    search:
      schedule.warmup_epochs: {grid: [1, 4]}
      epochs: {grid: [2, 8]}
    """)
    rejected(path, "schedule.warmup_epochs=4", "epochs=2", "exceeds epochs")


def test_set_overrides_are_validated_the_same_way(tmp_path):
    path = write(tmp_path, GOOD)
    sweep = load_sweep_config(path, ["base.epochs=7", "base.optimizer={name: sgd, lr: 0.5}", "num_samples=1"])
    assert sweep.base.epochs == 7 and sweep.base.optimizer.name == "sgd" and sweep.num_samples == 1
    rejected(path, "base.epochs", overrides=["base.epochs=-2"])
    rejected(path, "base.optimizer.nme", "unknown field", overrides=["base.optimizer.nme=sgd"])
    with pytest.raises(UserError, match="expected dotted.key=value"):
        load_sweep_config(path, ["base.epochs"])


def test_smoke_makes_two_short_trials(tmp_path):
    sweep = load_sweep_config(write(tmp_path, GOOD), smoke=True)
    assert sweep.base.epochs == 1 and sweep.base.data.train_limit == 512
    assert len(sweep.search) == 1 and len(next(iter(sweep.search.values())).grid) == 2 and sweep.num_samples == 1


def test_run_config_file_and_trial_assignment(tmp_path):
    path = write(tmp_path, "epochs: 2\nmethod: {temperature: 0.3}\n", "run.yaml")
    run = load_run_config(path)
    assert apply_assignment(run, {"method.temperature": 0.7}).method.temperature == 0.7
    rejected(write(tmp_path, "epochs: 2\nsearch: {}\nbase: {}\n", "bad.yaml"), "unknown field", loader=load_run_config)


def run_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "raysl", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_rejects_bad_files_without_traceback_and_before_ray_starts(tmp_path):
    bad = write(tmp_path, "base:\n  optimizer: {lr: fast}\n")
    for command in ("validate", "sweep", "train"):
        result = run_cli(command, str(bad))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert str(bad) in result.stderr
        assert "starting an embedded local Ray" not in result.stdout
        assert ("base.optimizer.lr" in result.stderr) or command == "train"


def test_cli_validate_accepts_good_file_and_set(tmp_path):
    result = run_cli("validate", str(write(tmp_path, GOOD)), "--set", "base.epochs=5")
    assert result.returncode == 0, result.stderr
    assert "valid sweep config" in result.stdout


def test_cpu_budget_is_checked_before_ray_starts(tmp_path):
    path = write(tmp_path, """
    base:
      resources: {cpus_per_worker: 0.5}
    search:
      method.temperature: {grid: [0.1, 0.2]}
    max_concurrent_trials: 2
    """)
    result = run_cli("sweep", str(path))  # 2 x (0.5 worker + 0.5 actor + 0.1 driver) leaves no CPU for the reads
    assert result.returncode == 2
    assert "max_concurrent_trials" in result.stderr and "Ray Data" in result.stderr and "1 do" in result.stderr
    assert "Traceback" not in result.stderr and "starting an embedded local Ray" not in result.stdout


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize(
    "text, fragments",
    [
        # K must be a multiple of the keys enqueued per step: the global batch (x2 when symmetric)
        ("base:\n  batch_size: 128\n  method: {name: moco, queue_size: 1000}\n",
         ["method.queue_size 1000", "multiple", "global batch = 128"]),
        ("base:\n  batch_size: 128\n  method: {name: moco, queue_size: 384, symmetric: true}\n",
         ["method.queue_size 384", "x 2", "256"]),
        ("base:\n  batch_size: 64\n  method: {name: moco, queue_size: 64, shuffle_bn_groups: 64}\n",
         ["method.shuffle_bn_groups"]),
        ("base:\n  model: {projector_out: 128}\n  method: {name: wmse, w_size: 128}\n",
         ["method.w_size 128", "model.projector_out 128"]),
        ("base:\n  batch_size: 200\n  model: {projector_out: 16}\n  method: {name: wmse, w_size: 64}\n",
         ["method.w_size 64", "divide batch_size 200"]),
        ("base:\n  method: {name: dino}\n", ["base.method.name", "unknown 'dino'", "moco", "logo-simsiam"]),
        ("base:\n  method: {name: moco, temperature: 0.2, queue: 10}\n", ["base.method.queue", "unknown field"]),
        ("base:\n  method: {name: logo-moco, queue_size: 512}\n", ["logo-moco needs at least 2 local crops"]),
        ("base:\n  method: {name: byol}\n  views: {crops: [{count: 4}]}\n", ["byol needs exactly 2 views"]),
        ("base:\n  views: {crops: [{count: 1}, {count: 1, role: local, size: 14}]}\n", ["role local is for logo"]),
    ],
)
def test_method_rules_name_the_field(tmp_path, text, fragments):
    rejected(write(tmp_path, text), *fragments)


def test_every_queue_size_a_search_can_draw_is_checked(tmp_path):
    text = """
    base:
      batch_size: 128
      method: {name: moco}
    search:
      method.queue_size: {grid: [1024, 4096, 5000]}
    """
    rejected(write(tmp_path, text), "search.method.queue_size", "5000", "multiple")
    # ... including against another searched field (a batch the queue is no multiple of)
    text = """
    base:
      method: {name: moco, queue_size: 1024}
    search:
      batch_size: {grid: [128, 384]}
    """
    rejected(write(tmp_path, text), "batch_size=384", "method.queue_size 1024")
    text = """
    base:
      model: {projector_out: 64}
      batch_size: 256
      method: {name: wmse}
    search:
      method.w_size: {grid: [128, 64]}
    """
    rejected(write(tmp_path, text), "method.w_size=64", "must exceed")


def test_logo_crop_bounds_are_searchable_and_overlap_is_flagged_not_refused(tmp_path):
    text = """
    base:
      method: {name: logo-simsiam}
      views:
        crops:
          - {count: 2, size: 28, scale: [0.5, 1.0], role: global}
          - {count: 2, size: 14, scale: [0.1, 0.3], role: local}
    search:
      views.crops.0.scale.0: {uniform: [0.3, 0.6]}
      views.crops.1.scale.1: {grid: [0.2, 0.5]}
      method.ll_weight: {loguniform: [0.00001, 0.001]}
    """
    sweep = load_sweep_config(write(tmp_path, text))
    assert sweep.base.method.ll_weight == pytest.approx(1e-4)  # the LoGo-over-SimSiam default
    assert len(sweep.notes) == 1 and "r_l=0.5 exceeds" in sweep.notes[0] and "r_g=0.3" in sweep.notes[0]
    trial = apply_assignment(sweep.base, {"views.crops.0.scale.0": 0.4, "views.crops.1.scale.1": 0.2})
    assert trial.views.crops[0].scale == (0.4, 1.0) and trial.views.crops[1].scale == (0.1, 0.2) and not trial.notes()
    assert RunConfig.model_validate({"method": {"name": "logo-moco", "queue_size": 512}, "batch_size": 256, "views": {"crops": [
        {"count": 2, "role": "global"}, {"count": 2, "size": 14, "role": "local"}]}}).method.ll_weight == pytest.approx(5e-4)


def test_cli_prints_the_overlap_note(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "raysl", "validate", str(ROOT / "sweeps" / "logo-moco.yaml")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0 and "note: local crops' scale upper bound" in result.stdout
