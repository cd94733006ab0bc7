"""Clusters for real: a multi-node Ray cluster on this machine (head with 0 CPUs and the job server, an
augment-role node, train-role nodes; each its own raylet), `ray job submit`, placement by node labels,
DDP across nodes, and faults (a Train worker SIGKILLed, the sweep driver SIGKILLed, a node removed, a
loss gone non-finite, a truncated checkpoint, placement groups after a 12-trial ASHA sweep).

All slow. The longest (marked `cluster`) are left out of `make test`; `make test-cluster` runs them.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from raysl.ingest.prepare import prepare
from raysl.ray_glue.local_cluster import ROLE, LocalCluster
from raysl.report.experiment import trial_run_dir
from conftest import make_idx_source, registered_checkpoint

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
AUGMENT = {ROLE: "augment"}
TRAIN = {ROLE: "train"}


def _cluster_env() -> dict[str, str]:
    """The environment the cluster's processes (and so submitted jobs) inherit: this venv's `raysl` and
    `ray` first on PATH, and token authentication on, as Ray 2.60 clusters have it."""
    return {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "PYTHONPATH": str(REPO),
    }


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _cluster_env().items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        local = LocalCluster(augment_cpus=2, train_cpus=2, train_nodes=2)
        try:
            yield local
        finally:
            local.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """6000 synthetic train images: epochs long enough (seconds) to kill things in the middle of."""
    root = tmp_path_factory.mktemp("cluster-data")
    out = root / "prepared"
    prepare("mnist", str(make_idx_source(root / "idx", train=6000, test=300)), str(out), progress=False, workers=1)
    return str(out)


def tiny_run(data_path: str, **extra) -> dict:
    run = {
        "data": {"path": data_path},
        "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "schedule": {"warmup_epochs": 0},
        "epochs": 2,
        "batch_size": 64,
        "evaluation": {"bank_limit": 1000, "query_limit": 300},
        "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "torch_threads": 1,
                      "augment_on": AUGMENT, "train_on": TRAIN},
    }
    for key, value in extra.items():
        run[key] = {**run[key], **value} if isinstance(value, dict) and isinstance(run.get(key), dict) else value
    return run


def write_yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def raysl(*args: str, cluster: LocalCluster | None = None, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **_cluster_env(), **(env or {})}
    if cluster:
        environment["RAY_ADDRESS"] = cluster.address
    done = subprocess.run([sys.executable, "-m", "raysl", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=environment)
    return done


def start_raysl(*args: str, cluster: LocalCluster, log: Path) -> subprocess.Popen:
    environment = {**os.environ, **_cluster_env(), "RAY_ADDRESS": cluster.address}
    return subprocess.Popen([sys.executable, "-m", "raysl", *args], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            cwd=REPO, env=environment)


def read_leaderboard(experiment: Path) -> list[dict]:
    with open(experiment / "leaderboard.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(path for path in run_dir.glob("checkpoint_*") if path.is_dir()) if run_dir.is_dir() else []


def trial_epochs(experiment: Path) -> dict[str, int]:
    """Each Tune trial's last reported epoch (from its result.json), by trial directory name."""
    epochs = {}
    for result in experiment.glob("trial_*/result.json"):
        lines = [line for line in result.read_text().splitlines() if line.strip()]
        if lines:
            epochs[result.parent.name] = int(json.loads(lines[-1]).get("epoch", 0))
    return epochs


def roles_of(cluster: LocalCluster) -> dict[str, str]:
    from ray.util.state import list_nodes

    return {node.node_id: (node.labels or {}).get(ROLE, "") for node in list_nodes(address=cluster.job_server, limit=100)}


# ----------------------------------------------------------------------------- submitting and placement


def test_ray_job_submit_runs_a_smoke_sweep_with_work_placed_by_role(fashion_mnist, cluster, tmp_path):
    """`ray job submit --working-dir .` of the quickstart sweep with --smoke: SUCCEEDED, the job's last line
    is the experiment path, the leaderboard is in storage, reads/augmentation ran on the augment node
    and Train workers on train nodes."""
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors, list_tasks

    client = JobSubmissionClient(cluster.job_server)

    def agent_ready():  # the head's job agent registers a little after the cluster is up ("No available agent")
        try:
            return client.submit_job(entrypoint="true")
        except RuntimeError as error:
            if "No available agent" in str(error):
                return None
            raise

    probe = wait_for(agent_ready, 180, "the job server's agent", interval=2)
    wait_for(lambda: client.get_job_status(probe).is_terminal(), 180, "the probe job to end")
    job_id = f"raysl-smoke-{os.getpid()}"
    storage = tmp_path / "results"
    command = [
        "ray", "job", "submit", "--address", cluster.job_server, "--submission-id", job_id, "--working-dir", ".",
        "--", "raysl", "sweep", "sweeps/quickstart.yaml", "--smoke",
        "--set", f"storage_path={storage}", "--set", "name=submitted",
        "--set", "base.resources.augment_on={raysl/role: augment}", "--set", "base.resources.train_on={raysl/role: train}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, **_cluster_env()})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert client.get_job_status(job_id) == JobStatus.SUCCEEDED
    logs = client.get_job_logs(job_id)
    assert "leaderboard (best kNN top-1 per trial)" in logs and " started: " in logs  # the live view: a line per trial event (not a terminal)
    experiment = storage / "submitted"
    assert [line for line in logs.splitlines() if line.strip()][-1] == str(experiment)
    rows = read_leaderboard(experiment)
    assert len(rows) == 2 and all(row["status"] == "completed" for row in rows)
    uploaded = (experiment / "leaderboard.csv").stat().st_size
    assert uploaded > 0

    roles = roles_of(cluster)
    actors = list_actors(address=cluster.job_server, limit=10000, detail=True)
    augmenters = [a for a in actors if "AugmentViews" in a.class_name]
    train_workers = [a for a in actors if a.class_name == "RayTrainWorker"]
    assert augmenters and train_workers
    assert {roles[a.node_id] for a in augmenters} == {"augment"}
    assert {roles[a.node_id] for a in train_workers} == {"train"}
    reads = [t for t in list_tasks(address=cluster.job_server, limit=10000, detail=True) if "ReadParquet" in (t.name or "")]
    assert reads and {roles[t.node_id] for t in reads} == {"augment"}


def test_two_workers_on_two_nodes_give_the_loss_and_gradients_of_one(cluster):
    """SimCLR with negatives gathered across ranks: 2 gloo workers on 2 train nodes, each with half of a
    fixed global batch, give the loss and the (DDP-averaged) gradients of 1 worker with all of it.
    Batch norm runs in eval mode here: in training mode its statistics are per rank by design."""
    import ray
    import ray.train
    import ray.util.state
    from ray.train.torch import TorchTrainer

    def loop(config):
        import torch

        from raysl.config import RunConfig
        from raysl.methods import build_method

        context = ray.train.get_context()
        rank, world = context.get_world_rank(), context.get_world_size()
        run = RunConfig.model_validate({"model": {"width": 8, "projector_hidden": 32, "projector_out": 16}, "batch_size": 16})
        torch.manual_seed(0)
        method = build_method(run, 1).eval()
        model = ray.train.torch.prepare_model(method, move_to_device=False) if world > 1 else method
        generator = torch.Generator().manual_seed(1)
        views = [torch.randn(16, 1, 28, 28, generator=generator) for _ in range(2)]
        share = 16 // world
        loss = model([view[rank * share : (rank + 1) * share] for view in views])
        loss.backward()
        losses = [torch.zeros(()) for _ in range(world)]
        if world > 1:
            torch.distributed.all_gather(losses, loss.detach())
        else:
            losses = [loss.detach()]
        grad = torch.cat([p.grad.flatten() for p in method.parameters() if p.grad is not None])
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            saved = None
            if rank == 0:  # what rank 0 computed, handed back as a checkpoint file
                Path(directory, "out.json").write_text(json.dumps({"loss": float(torch.stack(losses).mean()), "grad": grad.tolist()}))
                saved = ray.train.Checkpoint.from_directory(directory)
            ray.train.report({}, checkpoint=saved)

    def fit(workers: int):
        trainer = TorchTrainer(
            loop,
            scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1.5}, label_selector=TRAIN),
            run_config=ray.train.RunConfig(storage_path=str(Path(cluster.root) / "ddp"), name=f"ddp{workers}"),
        )
        with trainer.fit().checkpoint.as_directory() as directory:
            return json.loads(Path(directory, "out.json").read_text())

    ray.init(address=cluster.address, runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        one, two = fit(1), fit(2)
        workers_nodes = [a.node_id for a in ray.util.state.list_actors(
            address=cluster.job_server, filters=[("class_name", "=", "RayTrainWorker")], limit=1000, detail=True)]
    finally:
        ray.shutdown()
    roles = roles_of(cluster)
    # 1.5 CPUs each on 2-CPU train nodes: the two workers of the 2-worker run had to use both train nodes.
    assert len({node for node in workers_nodes if roles[node] == "train"}) == 2
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    import torch

    torch.testing.assert_close(torch.tensor(two["grad"]), torch.tensor(one["grad"]), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- faults


def test_train_worker_sigkill_restarts_from_the_checkpoint_and_a_truncated_checkpoint_falls_back(cluster, dataset, tmp_path):
    """SIGKILL the Train worker in epoch 2: Train restarts it (max_failures) from epoch 1's checkpoint and the
    run ends after exactly 3 epochs. Then truncate the newest checkpoint and extend the run: it says the
    file cannot be loaded and resumes from the previous one."""
    from ray.util.state import list_actors

    storage = tmp_path / "results"
    config = write_yaml(tmp_path / "run.yaml", {**tiny_run(dataset, epochs=3), "max_failures": 1,
                                                 "storage_path": str(storage), "name": "killed"})
    run_dir = storage / "killed"
    log = tmp_path / "train.log"
    process = start_raysl("train", str(config), cluster=cluster, log=log)
    # Ray Train has committed epoch 1's checkpoint (its snapshot names it), not merely uploaded it; epoch 2 (~8 s)
    # is under way. Then the one live Train worker, once the State API lists it (polled, not a fixed wait).
    wait_for(lambda: registered_checkpoint(run_dir) and "[killed] epoch 1/3" in log.read_text(), 300, "epoch 1's committed checkpoint")

    def live_workers():
        alive = list_actors(address=cluster.job_server, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
        return alive if len(alive) == 1 else None

    (worker,) = wait_for(live_workers, 60, "exactly one live RayTrainWorker")
    assert process.poll() is None and "[killed] epoch 3/3" not in log.read_text(), "the run ended before the kill"
    os.kill(worker.pid, signal.SIGKILL)
    assert process.wait(timeout=600) == 0, log.read_text()[-3000:]
    output = log.read_text()
    assert re.search(r"done: 3 epochs, .* resumed from the checkpoint of epoch [12]\)", output), output[-3000:]

    newest = checkpoints(run_dir)[-1]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[:1000])
    longer = raysl("train", str(config), "--set", "epochs=4", cluster=cluster)
    assert longer.returncode == 0, longer.stderr[-3000:]
    text = longer.stdout + longer.stderr
    assert f"checkpoint {newest}/state.pt cannot be loaded" in text
    assert "trying the previous checkpoint" in text and "fell back past 1 unreadable" in text
    assert re.search(r"done: 4 epochs, .* resumed from the checkpoint of epoch 2\)", text), text[-3000:]


def test_a_non_finite_trial_fails_clearly_and_the_sweep_goes_on(cluster, dataset, tmp_path):
    storage = tmp_path / "results"
    sweep = write_yaml(tmp_path / "sweep.yaml", {
        "base": tiny_run(dataset, epochs=2, max_failures=1), "search": {"optimizer.lr": {"grid": [0.01, 1e6]}},
        "scheduler": {"name": "fifo"}, "max_concurrent_trials": 2, "storage_path": str(storage), "name": "nan",
    })
    done = raysl("sweep", str(sweep), cluster=cluster)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {float(row["optimizer.lr"]): row for row in read_leaderboard(storage / "nan")}
    assert rows[0.01]["status"] == "completed" and rows[0.01]["epochs"] == "2"
    failed = rows[1e6]
    assert failed["status"].startswith("failed: loss nan at epoch 1 step "), failed
    run_dir = Path(trial_run_dir(str(storage / "nan"), failed["trial"]))
    assert not checkpoints(run_dir), "a checkpoint was written after the loss went non-finite"
    assert "loss became nan at epoch 1, step" in (run_dir / "nonfinite.txt").read_text()


@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_sweep_driver_sigkill_then_resume_finishes_the_same_trials(cluster, dataset, tmp_path):
    """SIGKILL `raysl sweep` once one trial has finished and another is mid-run; `--resume` finishes the
    same 3 trials: the finished one is not re-run, the running one resumes from its checkpoint."""
    total = 10  # epochs per trial
    storage = tmp_path / "results"
    sweep = write_yaml(tmp_path / "sweep.yaml", {
        "base": tiny_run(dataset, epochs=total), "search": {"optimizer.lr": {"grid": [0.01, 0.005, 0.002]}},
        "scheduler": {"name": "fifo"}, "max_concurrent_trials": 2, "storage_path": str(storage), "name": "killed",
    })
    experiment = storage / "killed"
    log = tmp_path / "sweep.log"
    process = start_raysl("sweep", str(sweep), cluster=cluster, log=log)

    def one_done_one_running():
        # Epochs of this tiny run take ~1.3 s, and a killed driver's trials take a few seconds to die: kill
        # while the running trial has at least 6 epochs to go, so that it is still mid-run when it stops.
        epochs = trial_epochs(experiment)
        done = [t for t, e in epochs.items() if e >= total]
        running = [t for t, e in epochs.items() if 1 <= e <= total - 6]
        return (done, running) if done and running else None

    finished, running = wait_for(one_done_one_running, 600, "one finished and one running trial")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    def run_dir(trial: str) -> Path:  # train/<id> (Ray Train) or the trial's own directory (its loop in the trial)
        return Path(trial_run_dir(str(experiment), trial.removeprefix("trial_")))

    finished_checkpoints = {trial: checkpoints(run_dir(trial)) for trial in finished}

    resumed = raysl("sweep", str(sweep), "--resume", cluster=cluster)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    text = resumed.stdout + resumed.stderr
    rows = read_leaderboard(experiment)
    assert len(rows) == 3 and all(row["status"] == "completed" and row["epochs"] == str(total) for row in rows), rows
    for trial, before in finished_checkpoints.items():  # not re-run: no new checkpoint
        assert before and checkpoints(run_dir(trial)) == before, f"finished {trial} was re-run"
    for trial in running:  # resumed from its checkpoint, not from scratch
        reports = [json.loads(line) for line in (experiment / trial / "result.json").read_text().splitlines() if line.strip()]
        assert any(report.get("resumed_at_epoch", 0) >= 1 for report in reports), (trial, reports)
    assert "resuming sweep at" in text


@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_a_node_removed_mid_sweep_its_trials_resume_elsewhere(dataset, tmp_path):
    """Remove the train node running a trial's Train worker (its raylet killed): the trial resumes on the
    other train node from its checkpoint and every trial completes (a retried trial that finished is
    "completed" in the leaderboard, though its failed attempt's error.txt stays)."""
    from ray.util.state import list_actors

    total = 10  # epochs per trial

    with pytest.MonkeyPatch.context() as patch:
        for key, value in _cluster_env().items():
            patch.setenv(key, value)
        local = LocalCluster(augment_cpus=2, train_cpus=2, train_nodes=2)
        try:
            storage = tmp_path / "results"
            sweep = write_yaml(tmp_path / "sweep.yaml", {
                "base": tiny_run(dataset, epochs=total), "search": {"optimizer.lr": {"grid": [0.01, 0.005]}},
                "scheduler": {"name": "fifo"}, "max_concurrent_trials": 2, "storage_path": str(storage), "name": "lost",
            })
            log = tmp_path / "sweep.log"
            process = start_raysl("sweep", str(sweep), cluster=local, log=log)
            experiment = storage / "lost"
            # Both trials have reported epoch 1 to Tune (so its checkpoint is committed): either may lose its node.
            # Each still has at least 6 epochs (~1-4 s each) to go, so it is mid-run when its node goes.
            wait_for(lambda: len(e := trial_epochs(experiment)) == 2 and 1 <= min(e.values()) and max(e.values()) <= total - 6,
                     600, "both trials' epoch 1")
            workers = list_actors(address=local.job_server, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            victim = next(node for node in local.train if node.node_id in {w.node_id for w in workers})
            local.remove_node(victim)
            assert process.wait(timeout=900) == 0, log.read_text()[-4000:]
            output = log.read_text()
        finally:
            local.shutdown()
    rows = read_leaderboard(experiment)
    assert len(rows) == 2 and all(row["status"] == "completed" and row["epochs"] == str(total) for row in rows), output[-4000:]
    resumed = []
    for result in experiment.glob("trial_*/result.json"):
        reports = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        resumed += [report for report in reports if report.get("resumed_at_epoch", 0) >= 1]
    assert resumed, "no trial resumed from a checkpoint after its node was removed"


@pytest.mark.cluster
@pytest.mark.timeout(1500)
def test_a_12_trial_asha_sweep_with_2_slots_leaves_no_placement_group(cluster, dataset, tmp_path):
    from ray.util.state import list_placement_groups

    storage = tmp_path / "results"
    sweep = write_yaml(tmp_path / "sweep.yaml", {
        "base": tiny_run(dataset, epochs=3, data={"path": dataset, "train_limit": 1024}),
        "search": {"optimizer.lr": {"loguniform": [0.001, 0.05]}},
        "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_samples": 12, "max_concurrent_trials": 2, "storage_path": str(storage), "name": "asha12",
    })
    done = raysl("sweep", str(sweep), cluster=cluster, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = read_leaderboard(storage / "asha12")
    assert len(rows) == 12 and not [row for row in rows if row["status"].startswith("failed")]
    assert any(row["status"].startswith("stopped early") for row in rows)  # ASHA stopped some

    def all_removed():
        groups = list_placement_groups(address=cluster.job_server, limit=10000, detail=True)
        return groups if groups and all(group.state == "REMOVED" for group in groups) else None

    wait_for(all_removed, 60, "every placement group to be removed")
