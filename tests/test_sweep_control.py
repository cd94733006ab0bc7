"""What the docs promise about stopping, resuming and retrying a sweep, checked without Ray (seconds each): Tune's
Tuner is replaced by a stand-in that records what raysl gave it and raises what Tune would, so the CLI, the API and
raysl/ray_glue/tune.py run for real around it.

- docs/configuration.md "Ctrl-C, resuming and TensorBoard": a second Ctrl-C (KeyboardInterrupt out of Tuner.fit)
  exits 130, marks the experiment interrupted and prints the `--resume` command with the same `--set` and `--smoke`;
  that command restores the same experiment with the same (smoke, overridden) sweep.
- docs/configuration-reference.md `trial_retries`, docs/configuration.md "Where a trial's loop runs": Tune restarts a
  trial trial_retries + base.max_failures times (the loop in the trial), trial_retries (through a TorchTrainer),
  without limit when max_failures is -1.
- docs/clusters.md "Faults": a `nonfinite.txt` makes a retried attempt stop at once, before it trains; when no
  checkpoint of a run loads, the error names every file.
- docs/clusters.md, configuration.md: `raysl validate SWEEP --cluster FILE` says how many trials run at once on that
  file's node types.
- docs/export.md: on object storage the sweep prints the `raysl export` command instead of exporting.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml

import raysl.api as api
import raysl.ray_glue.sweep_end as sweep_end
import raysl.ray_glue.trial as trial_glue
import raysl.ray_glue.tune as tune_glue
from raysl.cli import INTERRUPTED, main
from raysl.config import RunConfig, load_sweep_config
from raysl.report.experiment import ENDING_FILE
from tests.test_ray_integration import SMALL_RUN

ROOT = Path(__file__).resolve().parents[1]


class FakeTuner:
    """ray.tune.Tuner's surface that run_sweep uses. `fit` raises `raises` (KeyboardInterrupt: a second Ctrl-C while
    Tune stops the trials, which Tune no longer catches)."""

    made: list[dict] = []
    restored: list[dict] = []
    raises: type[BaseException] = KeyboardInterrupt

    def __init__(self, trainable, **options):
        FakeTuner.made.append({"trainable": trainable, **options})

    @staticmethod
    def can_restore(path: str) -> bool:
        return Path(path, tune_glue.SWEEP_FILE).is_file()

    @classmethod
    def restore(cls, path: str, *, trainable, resume_errored: bool = False):
        cls.restored.append({"path": path, "trainable": trainable, "resume_errored": resume_errored})
        return cls.__new__(cls)

    def fit(self):
        raise FakeTuner.raises()


@pytest.fixture
def fake_tune(monkeypatch):
    """Tune replaced (see FakeTuner); the sweep each run_sweep trains (what trial_trainable got) recorded; no Ray."""
    FakeTuner.made, FakeTuner.restored, FakeTuner.raises = [], [], KeyboardInterrupt
    trained: list = []
    monkeypatch.setattr(tune_glue.tune, "Tuner", FakeTuner)
    monkeypatch.setattr(tune_glue, "trial_trainable", lambda sweep, data_uri, git_commit: trained.append(sweep) or "trainable")
    monkeypatch.setattr(api, "ray_session", _no_ray)
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # run_sweep sets it; put back afterwards
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return trained


def _no_ray(**options):
    import contextlib

    return contextlib.nullcontext()


def _sweep_file(tmp_path: Path, data: str, **fields) -> Path:
    sweep = {
        "base": {**SMALL_RUN, "data": {"path": data}, "epochs": 4},
        "search": {"optimizer.lr": {"grid": [0.01, 0.02, 0.03]}},
        "scheduler": {"name": "fifo"}, "max_concurrent_trials": 1, "storage_path": str(tmp_path / "results"),
        "name": "control", **fields,
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_a_second_ctrl_c_exits_130_with_the_resume_command_that_keeps_set_and_smoke(fake_tune, tiny_dataset, tmp_path,
                                                                                    capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = _sweep_file(tmp_path, tiny_dataset)
    options = ["--set", "base.optimizer.lr=0.005", "--set", "storage_path=elsewhere", "--smoke"]
    assert main(["sweep", str(sweep), *options]) == INTERRUPTED
    captured = capsys.readouterr()
    command = captured.out.strip().splitlines()[-1].strip()
    assert command == shlex.join(["raysl", "sweep", str(sweep), *options, "--resume"]), captured.out[-2000:]
    assert "finish the same trials with:" in captured.out and "interrupted" in captured.err
    (first,) = fake_tune
    assert first.base.epochs == 1 and first.trial_count == 2  # --smoke
    experiment = tmp_path / "elsewhere" / "control"  # --set storage_path (relative to where raysl runs)
    assert json.loads((experiment / ENDING_FILE).read_text()) == {"ended": "interrupted"}
    assert load_sweep_config(experiment / "sweep.yaml").base.epochs == 1
    assert not (experiment / "leaderboard.csv").exists()  # not written after a second Ctrl-C (raysl report builds it)

    # The printed command continues the same experiment with the same sweep: --smoke and --set kept.
    assert main(shlex.split(command)[1:]) == INTERRUPTED
    output = capsys.readouterr().out
    assert f"resuming sweep at {experiment}" in output and output.strip().splitlines()[-1].strip() == command
    (restored,) = FakeTuner.restored
    assert restored["path"] == str(experiment) and restored["resume_errored"]
    resumed = fake_tune[1]
    assert resumed.model_dump() == first.model_dump()
    assert resumed.base.optimizer.lr == 0.005 and resumed.base.epochs == 1 and resumed.storage_path == str(tmp_path / "elsewhere")


def test_the_python_api_raises_sweep_interrupted_with_path_and_command(fake_tune, tiny_dataset, tmp_path):
    sweep = _sweep_file(tmp_path, tiny_dataset)
    with pytest.raises(tune_glue.SweepInterrupted) as caught:
        api.sweep(str(sweep), ["max_concurrent_trials=1"], log=lambda text: None)
    assert caught.value.path == str(tmp_path / "results" / "control")
    assert caught.value.resume_command == shlex.join(["raysl", "sweep", str(sweep), "--set", "max_concurrent_trials=1", "--resume"])


@pytest.mark.parametrize("resources, retries, max_failures, expected", [
    ({}, 2, 1, 3),  # the loop in the trial: Tune also makes the restarts Train would have made
    ({}, 0, 0, 0),
    ({}, 1, -1, -1),  # max_failures -1: without limit
    ({"trial_loop": "train"}, 2, 1, 2),  # through a TorchTrainer: Train restarts workers itself, Tune the trial
    ({"workers": 2}, 1, 3, 1),
])
def test_trial_retries_is_how_often_tune_restarts_a_trial(fake_tune, tiny_dataset, tmp_path, resources, retries,
                                                          max_failures, expected):
    sweep = load_sweep_config(_sweep_file(tmp_path, tiny_dataset, trial_retries=retries), [
        f"base.max_failures={max_failures}", *(f"base.resources.{key}={value}" for key, value in resources.items())])
    assert sweep.in_trial == (not resources)
    with pytest.raises(tune_glue.SweepInterrupted):
        tune_glue.run_sweep(sweep, tiny_dataset, git_commit="test", log=lambda text: None)
    (made,) = FakeTuner.made
    assert made["run_config"].failure_config.max_failures == expected


def test_trial_retries_defaults_to_1_and_cannot_be_negative(tiny_dataset, tmp_path):
    from raysl.errors import UserError

    assert load_sweep_config(_sweep_file(tmp_path, tiny_dataset)).trial_retries == 1
    with pytest.raises(UserError, match="trial_retries"):
        load_sweep_config(_sweep_file(tmp_path, tiny_dataset, trial_retries=-1))


# ----------------------------------------------------------------------------- a retried attempt after a NaN


class _Context:
    def __init__(self, trial_id: str, experiment: str):
        self.trial_id, self.experiment = trial_id, experiment

    def get_trial_id(self) -> str:
        return self.trial_id

    def get_experiment_name(self) -> str:
        return self.experiment


def _must_not_train(*args, **kwargs):
    raise AssertionError("a retried attempt trained again after its loss went non-finite")


@pytest.mark.parametrize("resources", [{}, {"trial_loop": "train"}])
def test_nonfinite_txt_stops_a_retried_trial_before_it_trains(tiny_dataset, tmp_path, monkeypatch, resources):
    from raysl.training.loop import NonFiniteLossError

    sweep = load_sweep_config(_sweep_file(tmp_path, tiny_dataset), [f"base.resources.{k}={v}" for k, v in resources.items()])
    experiment = tmp_path / "results" / "control"
    run_dir = experiment / "trial_t_00001" if sweep.in_trial else experiment / "train" / "t_00001"
    run_dir.mkdir(parents=True)
    recorded = "loss became nan at epoch 2, step 7; the run stops here"
    (run_dir / "nonfinite.txt").write_text(recorded)
    monkeypatch.setattr(trial_glue.tune, "get_context", lambda: _Context("t_00001", "control"))
    monkeypatch.setattr(trial_glue, "run_in_trial", _must_not_train)
    monkeypatch.setattr(trial_glue, "build_trainer", _must_not_train)
    monkeypatch.setattr(trial_glue, "configure_data_context", lambda run: None)
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 2, step 7"):
        trial_glue.raysl_trial({"search": {"optimizer.lr": 0.01}}, sweep=sweep.model_dump(mode="json"),
                              data_uri=tiny_dataset, git_commit="test", cwd=str(tmp_path))
    assert not list(run_dir.glob("checkpoint_*"))


def test_nonfinite_txt_stops_a_restarted_train_worker_before_it_reads_data(tiny_dataset, tmp_path):
    """Ray Train's restart of a worker (train_loop) with the marker there: "not retried", no batch read, no report."""
    from raysl.ray_glue.worker import LoopSession, train_loop
    from raysl.training.loop import NonFiniteLossError

    (tmp_path / "nonfinite.txt").write_text("loss became inf at epoch 1, step 3")

    class Untouchable:
        def __getattr__(self, name):
            raise AssertionError(f"the restarted worker read its data ({name})")

    run = RunConfig.model_validate({**SMALL_RUN, "data": {"path": tiny_dataset}, "epochs": 2})
    loop_config = {"run": run.model_dump(mode="json"), "data_uri": tiny_dataset, "epoch_images": 2000,
                   "run_dir": str(tmp_path), "label": "t"}
    session = LoopSession(rank=0, world_size=1, device=torch.device("cpu"), checkpoint=None, shard=Untouchable(),
                          report=_must_not_train)
    with pytest.raises(NonFiniteLossError, match=r"loss became inf at epoch 1, step 3 \(recorded in .*nonfinite.txt; not retried\)"):
        train_loop(loop_config, session)


# ----------------------------------------------------------------------------- checkpoints that do not load


def test_when_no_checkpoint_loads_the_error_names_every_file(tmp_path):
    import ray.train

    from raysl.ray_glue.worker import restore
    from raysl.training.loop import CheckpointError, Trainer

    run = RunConfig.model_validate({"model": {"width": 8, "projector_hidden": 16, "projector_out": 8}, "batch_size": 8, "epochs": 4})
    names = [f"checkpoint_00000{index}" for index in range(3)]
    for epoch, name in enumerate(names, start=1):
        trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
        trainer.epoch = epoch
        (tmp_path / name).mkdir()
        trainer.save(tmp_path / name)
    lines: list[str] = []
    # the newest two truncated: it falls back to the oldest, saying which and past how many
    for name in names[1:]:
        state = tmp_path / name / "state.pt"
        state.write_bytes(state.read_bytes()[:500])
    resumed = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    restore(resumed, ray.train.Checkpoint(str(tmp_path / names[-1])), log=lines.append)
    assert resumed.epoch == 1 and "fell back past 2 unreadable" in lines[-1] and names[0] in lines[-1]
    assert [names[2] in lines[0], names[1] in lines[0], names[1] in lines[1], names[0] in lines[1]] == [True, True, True, True]
    # all three truncated: the error names every one
    state = tmp_path / names[0] / "state.pt"
    state.write_bytes(state.read_bytes()[:500])
    with pytest.raises(CheckpointError) as caught:
        restore(Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1), ray.train.Checkpoint(str(tmp_path / names[-1])), log=lines.append)
    message = str(caught.value)
    assert message.startswith("no checkpoint of this run can be loaded")
    for name in names:
        assert f"{tmp_path / name}/state.pt cannot be loaded" in message, message


# ----------------------------------------------------------------------------- validate --cluster, export on S3


def _aws_nodes() -> tuple[int, int]:
    """(GPUs, nodes with GPUs) of cluster/aws.yaml's worker types, read here: the figure validate must match."""
    types = yaml.safe_load((ROOT / "cluster" / "aws.yaml").read_text())["available_node_types"]
    gpus = sum(int(spec.get("max_workers", 0)) * int(spec["resources"].get("GPU", 0)) for spec in types.values())
    return gpus, sum(1 for spec in types.values() if spec["resources"].get("GPU"))


def test_validate_cluster_says_how_many_trials_run_at_once_on_the_files_nodes(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    gpus, _ = _aws_nodes()
    sweep = load_sweep_config(ROOT / "sweeps" / "cluster.yaml")
    assert main(["validate", "sweeps/cluster.yaml", "--cluster", "cluster/aws.yaml"]) == 0
    out = capsys.readouterr().out
    wanted = min(sweep.trial_count, sweep.max_concurrent_trials, gpus)  # one GPU per trial
    assert f"note: {wanted} trial(s) at once on cluster/aws.yaml" in out and "sweeps/cluster.yaml: valid sweep config" in out
    # more trials than GPUs: the GPUs limit it
    assert main(["validate", "sweeps/cluster.yaml", "--cluster", "cluster/aws.yaml",
                 "--set", "num_samples=10", "--set", f"max_concurrent_trials={gpus + 4}"]) == 0
    assert f"note: {gpus} trial(s) at once on cluster/aws.yaml" in (out := capsys.readouterr().out) and "limited by GPUs" in out, out
    # a trial that fits on none of its nodes: an error naming the file, exit 2
    assert main(["validate", "sweeps/cluster.yaml", "--cluster", "cluster/aws.yaml", "--set", "base.resources.gpus_per_worker=2"]) == 2
    err = capsys.readouterr().err
    assert "cluster/aws.yaml cannot give" in err and "gpus_per_worker" in err and "Traceback" not in err
    # without --cluster, on this machine (no GPU): a note pointing at --cluster, still valid
    assert main(["validate", "sweeps/cluster.yaml"]) == 0
    assert "(for a cluster: raysl validate ... --cluster cluster/aws.yaml)" in capsys.readouterr().out


def test_on_object_storage_the_sweep_prints_the_export_command_instead(tmp_path):
    lines: list[str] = []
    sweep_end.export_best("t_00000", "s3://bucket/results/exp", log=lines.append)
    assert lines == ["best backbone: raysl export s3://bucket/results/exp --out best_backbone"]
