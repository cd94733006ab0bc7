"""What a run through Ray puts on the screen: its start, one line per epoch and its end; or one raysl error that
says what failed, where and what to do, naming the run's log, where Ray's own output (its workers' lines,
tracebacks, retries) went. A damaged shard or a non-finite loss is not retried: the worker group starts once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from raysl.ingest.dataset import read_manifest
from raysl.report.experiment import error_cause

RAY_CHATTER = ("Traceback", "Checkpoint successfully created", "TrainingReport", "Progress bars disabled",
               "RayDeprecationWarning", "core_worker.cc", "repeated", "retry", "Retry", "(RayTrainWorker", "(pid=")
TINY = {
    "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
    "views": {"crops": [{"count": 2, "size": 28, "scale": [0.5, 1.0]}]},
    "batch_size": 100, "epochs": 2, "schedule": {"warmup_epochs": 0}, "data": {"train_limit": 1000},
    "evaluation": {"knn_k": 20, "bank_limit": 500, "query_limit": 200},
    "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "torch_threads": 1},
}


def train(tmp_path: Path, data: str, name: str, **changes) -> subprocess.CompletedProcess:
    config = tmp_path / f"{name}.yaml"
    run = {**TINY, **changes, "name": name, "storage_path": str(tmp_path / "results")}
    run["data"] = {**TINY["data"], "path": data}
    config.write_text(yaml.safe_dump(run))
    return subprocess.run([sys.executable, "-m", "raysl", "train", str(config)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)


def assert_clean(screen: str) -> None:
    found = [text for text in RAY_CHATTER if text in screen]
    assert not found, f"Ray's output on the screen ({found}):\n{screen[-3000:]}"


def damaged_copy(dataset: str, tmp_path: Path) -> tuple[Path, str]:
    copy = tmp_path / "damaged"
    subprocess.run(["cp", "-r", dataset, str(copy)], check=True)
    shard = read_manifest(str(copy))["splits"]["train"]["shards"][0]
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 3: len(data) // 3 + 2000] = bytes(2000)  # a zeroed range, the size unchanged
    (copy / shard).write_bytes(bytes(data))
    return copy, shard


@pytest.mark.slow
def test_a_healthy_ray_train_run_prints_its_start_one_line_per_epoch_and_its_end(tiny_dataset, tmp_path, ray_address):
    results = tmp_path / "results"
    good = train(tmp_path, tiny_dataset, "good")
    assert good.returncode == 0, good.stdout[-3000:] + good.stderr[-3000:]
    lines = good.stdout.strip().splitlines()
    log = results / "good" / "raysl.log"
    assert lines[0] == f"run 'good': 2 epoch(s), 1 Train worker(s); Ray's output: {log}"
    epochs = [line for line in lines if line.startswith("[good] epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/2", "2/2"]  # one line per epoch, each once
    assert lines[-2].startswith("done: 2 epochs, knn_top1") and lines[-1] == str(results / "good")
    assert len(lines) == 6 and good.stderr == "", good.stdout + good.stderr  # + the line saying which Ray
    assert_clean(good.stdout)
    kept = log.read_text()
    assert "Checkpoint successfully created" in kept and "[good] epoch 2/2" in kept  # the rest is in the log


@pytest.mark.slow
def test_a_damaged_shard_through_ray_ends_in_one_raysl_error_and_no_restart(tiny_dataset, tmp_path, ray_address):
    results = tmp_path / "results"
    copy, shard = damaged_copy(tiny_dataset, tmp_path)
    bad = train(tmp_path, str(copy), "bad", max_failures=2)
    assert bad.returncode == 2, bad.stdout[-3000:] + bad.stderr[-3000:]
    errors = bad.stderr.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: training failed: rank 0: shard {copy}/{shard} is damaged")
    assert "row group" in errors[0] and "raysl prepare mnist" in errors[0]
    assert errors[1] == f"(run directory: {results / 'bad'}; Ray's output: {results / 'bad' / 'raysl.log'})"
    assert_clean(bad.stdout + bad.stderr)
    kept = (results / "bad" / "raysl.log").read_text()
    assert "Traceback" in kept  # Ray's traces are kept, off the screen
    assert kept.count("Started training worker group") == 1  # max_failures 2, yet the damaged shard is not retried
    assert (results / "bad" / "damaged_shard.txt").exists()


@pytest.mark.slow
def test_a_non_finite_loss_through_ray_ends_in_one_raysl_error_and_no_restart(tiny_dataset, tmp_path, ray_address):
    results = tmp_path / "results"
    nan = train(tmp_path, tiny_dataset, "nan", max_failures=2, optimizer={"name": "sgd", "lr": 1e6})
    assert nan.returncode == 2, nan.stdout[-3000:] + nan.stderr[-3000:]
    errors = nan.stderr.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith("error: training failed: rank 0: loss became") and "optimizer.lr" in errors[0]
    assert_clean(nan.stdout + nan.stderr)
    assert (results / "nan" / "raysl.log").read_text().count("Started training worker group") == 1


def test_a_trial_error_reads_as_its_cause_in_one_line():
    trace = ("Failure # 1 (occurred at 2026-12-07_21-40-00)\nray::ImplicitFunc.train() (pid=123, ip=10.0.0.1)\n"
             '  File "/x/raysl/data/pretraining.py", line 200, in guarded_batches\n'
             "    raise DamagedShardError(damage['message']) from None\n"
             "raysl.ingest.shards.DamagedShardError: shard /d/train/part-00002.parquet is damaged: row group 0\n"
             "re-prepare it: `raysl prepare mnist src --out /d`\n")
    assert error_cause(trace) == "shard /d/train/part-00002.parquet is damaged: row group 0 re-prepare it: `raysl prepare mnist src --out /d`"
    wrapped = "ray.exceptions.RayTaskError(RuntimeError): ray::ImplicitFunc.train()\n  File y\nRuntimeError: trial 1 failed: rank 1: boom"
    assert error_cause(wrapped) == "RuntimeError: trial 1 failed: rank 1: boom"
    killed = ("ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.\nMemory on the node "
              "(IP: 10.0.0.1, ID: abc) where the task (actor ID: def, name=ImplicitFunc.__init__) was running was 22.1GB / "
              "23.4GB (0.95), which exceeds the memory usage threshold of 0.95.")
    assert error_cause(killed).startswith("killed by Ray's out-of-memory monitor (the node used 22.1GB of 23.4GB): lower batch_size")


@pytest.mark.slow
def test_a_sweep_on_a_damaged_shard_says_each_trials_cause_once_and_ends_in_one_error(tiny_dataset, tmp_path, ray_address):
    copy, shard = damaged_copy(tiny_dataset, tmp_path)
    sweep = {"base": {**TINY, "epochs": 1, "data": {**TINY["data"], "path": str(copy)}},
             "search": {"method.temperature": {"grid": [0.1, 0.2]}}, "trial_retries": 1,
             "storage_path": str(tmp_path / "results"), "name": "damaged"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    result = subprocess.run([sys.executable, "-m", "raysl", "sweep", str(tmp_path / "sweep.yaml")], capture_output=True,
                            text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    experiment, log = tmp_path / "results" / "damaged", tmp_path / "results" / "damaged" / "raysl.log"
    failed = [line for line in result.stdout.splitlines() if " failed after " in line]
    assert len(failed) == 2 and all(f"shard {copy}/{shard} is damaged" in line and str(log) in line for line in failed), result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: all 2 trials failed; the first: shard {copy}/{shard} is damaged")
    assert errors[1].endswith(f"Ray's output: {log})") and str(experiment) in errors[1]
    assert_clean(result.stdout + result.stderr)
    assert "Traceback" in log.read_text()


def test_the_failure_policy_retries_a_killed_worker_but_not_raysl_errors():
    import ray.train
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raysl.errors import UserError
    from raysl.ingest.shards import DamagedShardError
    from raysl.ray_glue.failure_policy import RetryOnlyWhatARetryCanFix, failure_summary, install
    from raysl.training.loop import NonFiniteLossError

    def group_error(*failures):
        return WorkerGroupError("x", {rank: UserExceptionWithTraceback(failure, f"Traceback ...\n{failure!r}")
                                      for rank, failure in enumerate(failures)})

    for final in (DamagedShardError("shard s is damaged"), NonFiniteLossError("loss became nan; lower optimizer.lr"),
                  UserError("evaluation.label_sets: no such file")):
        policy = RetryOnlyWhatARetryCanFix(ray.train.FailureConfig(max_failures=3))
        error = group_error(ConnectionError("collective torn down"), final)
        assert policy.make_decision(error) == FailureDecision.RAISE
        assert failure_summary(error) == f"rank 1: {final}"  # the cause, not rank 0's collateral error
    policy = RetryOnlyWhatARetryCanFix(ray.train.FailureConfig(max_failures=1))
    assert policy.make_decision(group_error(RuntimeError("worker died"))) == FailureDecision.RETRY
    assert policy.make_decision(group_error(RuntimeError("worker died"))) == FailureDecision.RAISE  # max_failures spent
    assert install() and install()  # idempotent, and Ray's layout is the one it patches


def test_an_error_inside_ray_becomes_one_raysl_error_naming_the_log(tmp_path, capsys):
    from raysl.errors import UserError
    from raysl.ray_glue.run_log import run_log

    log = tmp_path / "raysl.log"
    with pytest.raises(UserError) as caught:
        with run_log(str(log)) as screen:
            screen.say("run 'x': 1 epoch(s)")
            os.write(2, b"(TrainController pid=1) chatter\n")  # what Ray writes to the process's stderr
            raise RuntimeError("The current node timed out during startup.")
    assert str(caught.value) == f"Ray failed: RuntimeError: The current node timed out during startup.\n(the trace and Ray's output: {log})"
    kept = log.read_text()
    assert "chatter" in kept and "Traceback" in kept and "chatter" not in capsys.readouterr().err


@pytest.mark.slow
def test_an_out_of_memory_kill_ends_in_one_raysl_error_that_says_what_to_change(tiny_dataset, tmp_path, monkeypatch):
    """Ray's memory monitor told that 5% of the memory is the limit kills a process of the run (the Train controller
    or worker, whichever it picks): the screen says so in one raysl error, with what to change and the log."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # an embedded Ray of its own, started with these settings
    monkeypatch.setenv("RAY_memory_usage_threshold", "0.05")
    monkeypatch.setenv("RAY_memory_monitor_refresh_ms", "250")
    killed = train(tmp_path, tiny_dataset, "oom", epochs=1)
    assert killed.returncode == 2, killed.stdout[-3000:] + killed.stderr[-3000:]
    errors = killed.stderr.strip().splitlines()
    assert len(errors) == 2 and "killed by Ray's out-of-memory monitor (the node used" in errors[0], killed.stderr
    assert "lower batch_size" in errors[0] and errors[1].endswith(f"{tmp_path / 'results' / 'oom' / 'raysl.log'})")
    assert_clean(killed.stdout + killed.stderr)
