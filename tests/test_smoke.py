"""--smoke fits the machine it runs on: the ImageNet-100 seed sweeps (4 GPU workers, 224 px crops, node labels)
become one CPU worker with small crops on a machine without a GPU, with one line saying so; a machine with a GPU
keeps it; a cluster (no machine given) keeps its resources; a `--set` that asked for less is kept."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from raysl.config import fit_to_machine, load_run_config, load_sweep_config

ROOT = Path(__file__).resolve().parents[1]
LOGO = ROOT / "sweeps" / "imagenet100-logo-moco.yaml"


@dataclass
class Machine:
    name: str = "this machine"
    cpus: float = 2.0
    gpus: float = 0.0


def test_smoke_fits_a_gpu_sweep_to_a_two_core_machine_without_a_gpu_and_says_so_in_one_line():
    sweep = load_sweep_config(LOGO, smoke=True, machine=Machine())
    resources = sweep.base.resources
    assert (resources.workers, resources.gpus_per_worker, resources.data_actors) == (1, 0.0, 1)
    assert resources.augment_on is None and resources.train_on is None
    # two trials at once share the 2 cores: half of a trial's share trains, a quarter augments
    assert resources.cpus_per_worker == 0.5 and resources.data_cpus == 0.25
    assert [crop.size for crop in sweep.base.views.crops] == [64, 32]
    assert sweep.base.evaluation.image_size == 64 and sweep.base.evaluation.probe.epochs == 5
    assert sweep.base.data.train_limit == 512 and sweep.base.epochs == 1 and sweep.trial_count == 2
    fitted = [note for note in sweep.notes if note.startswith("--smoke:")]
    assert len(fitted) == 1 and "\n" not in fitted[0]
    assert "2 CPUs, no GPU" in fitted[0] and "on the CPU" in fitted[0] and "global crops 64 px" in fitted[0]
    # the smoke's two trials still draw from the search space (LoGo's lambda), and the model is the sweep's own
    assert list(sweep.search) == ["method.ll_weight"] and sweep.base.model.backbone == "resnet18"


def test_smoke_keeps_a_gpu_where_there_is_one_and_the_crop_sizes_with_it():
    sweep = load_sweep_config(LOGO, smoke=True, machine=Machine(cpus=16, gpus=1))
    resources = sweep.base.resources
    assert resources.workers == 1 and resources.gpus_per_worker == 0.5  # two trials at once share the one GPU
    assert [crop.size for crop in sweep.base.views.crops] == [224, 96]
    assert resources.cpus_per_worker == 4 and resources.data_actors == 1


def test_smoke_without_a_machine_keeps_the_resources_a_cluster_run_asks_for():
    sweep = load_sweep_config(LOGO, smoke=True)
    assert sweep.base.resources.workers == 4 and sweep.base.resources.gpus_per_worker == 1
    assert not [note for note in sweep.notes if note.startswith("--smoke:")]
    assert sweep.base.data.train_limit == 512  # the sizes still shrink


def test_smoke_never_raises_what_a_set_lowered_and_says_nothing_when_nothing_changed():
    run = load_run_config({"data": {"path": "x"}, "resources": {"cpus_per_worker": 0.2, "data_cpus": 0.1}},
                          smoke=True, machine=Machine())
    assert run.resources.cpus_per_worker == 0.2 and run.resources.data_cpus == 0.1
    assert not [note for note in run.notes() if note.startswith("--smoke:")]
    fitted, note = fit_to_machine(run, Machine(cpus=64), trials_at_once=1)
    assert fitted == run and note is None


@pytest.mark.slow
def test_validate_smoke_of_the_seed_sweep_passes_on_a_machine_without_a_gpu(encoded_dataset):
    """`raysl validate --smoke` checks what `raysl sweep --smoke` runs here: no --set beyond the data."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = subprocess.run([sys.executable, "-m", "raysl", "validate", str(LOGO), "--smoke", "--set", f"base.data.path={encoded_dataset}"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--smoke: fitted to this machine" in result.stdout and "valid sweep config" in result.stdout
