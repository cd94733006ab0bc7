"""The chaos soak (`make soak`; marker `soak`, left out of `make test` and `make test-cluster`), modelled on Ray's
release chaos tests: a local cluster of a head and 6 worker nodes (2 augment, 4 train; each a real raylet), data and
results on a real S3 server (moto's), and a 24-trial ASHA sweep of SimCLR and MoCo while raysl.ray_glue.chaos kills,
at random, a trial's training process (a Ray Train worker, or the Tune trial running its loop itself), an
augmentation actor or a whole worker node (a fresh one of its role replacing it a while later).

- baseline: the same sweep undisturbed, RAYSL_SOAK_BASELINES times (default 1): its wall time and best kNN, whose
  range widened by RAYSL_SOAK_KNN_TOLERANCE (default 0.03: 1.4 binomial standard errors of a kNN top-1 near 0.6 on
  the 500 test queries) bounds the soak's best kNN;
- phase 1: the sweep under chaos, again while the chaos has run under RAYSL_SOAK_MINUTES (default 10); the chaos
  goes on until the last sweep ends;
- phase 2: the sweep under chaos, its driver SIGKILLed once a third of its trials ended, `--resume` finishing it.

Each phase checks and prints a table (also written as soak_report.txt beside the experiment and in its local
copy): kills by kind; the sweeps' exits and wall times against the baseline; every trial of the search space with
a terminal status and its reason; every trial's epochs in result.json and TensorBoard 1..N, none twice; every
checkpoint loads; epochs trained twice (rank 0's epoch lines in the workers' log files, kept for removed nodes too);
no placement group, actor, raylet or process of a removed node left; the best kNN against the baseline's.

Knobs (environment): RAYSL_SOAK_MINUTES (10), RAYSL_SOAK_KILL_INTERVAL_S (60), RAYSL_SOAK_MAX_KILLS (60),
RAYSL_SOAK_NODE_DOWN_S (60), RAYSL_SOAK_SAMPLES (2: 12 grid points x 2 = 24 trials), RAYSL_SOAK_EPOCHS (3),
RAYSL_SOAK_CONCURRENT (4), RAYSL_SOAK_LOOP (trial; train: every trial a TorchTrainer placed on the train nodes by
train_on, about 2.4x slower here), RAYSL_SOAK_SEED (the chaos's random choices).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import _write_idx, moto_s3, require_fashion_mnist
from raysl.io.storage import write_text
from raysl.ray_glue.chaos import Chaos, leftovers, table
from raysl.ray_glue.local_cluster import LocalCluster
from test_cluster import AUGMENT, TRAIN, _cluster_env, checkpoints, read_leaderboard, start_raysl, wait_for, write_yaml

pytestmark = [pytest.mark.slow, pytest.mark.soak]

BUCKET = "raysl-soak"
MINUTES = float(os.environ.get("RAYSL_SOAK_MINUTES", "10"))
INTERVAL_S = float(os.environ.get("RAYSL_SOAK_KILL_INTERVAL_S", "60"))
MAX_KILLS = int(os.environ.get("RAYSL_SOAK_MAX_KILLS", "60"))
NODE_DOWN_S = float(os.environ.get("RAYSL_SOAK_NODE_DOWN_S", "60"))
SAMPLES = int(os.environ.get("RAYSL_SOAK_SAMPLES", "2"))
EPOCHS = int(os.environ.get("RAYSL_SOAK_EPOCHS", "3"))
CONCURRENT = int(os.environ.get("RAYSL_SOAK_CONCURRENT", "4"))
BASELINES = int(os.environ.get("RAYSL_SOAK_BASELINES", "1"))
KNN_TOLERANCE = float(os.environ.get("RAYSL_SOAK_KNN_TOLERANCE", "0.03"))
LOOP = os.environ.get("RAYSL_SOAK_LOOP", "trial")  # trial: each loop in its Tune trial; train: TorchTrainers on train nodes
SEED = int(os.environ["RAYSL_SOAK_SEED"]) if os.environ.get("RAYSL_SOAK_SEED") else None
TRIALS = 12 * SAMPLES  # the grid: 2 methods x 3 learning rates x 2 weight decays
SWEEP_TIMEOUT_S = 3600
TERMINAL = re.compile(r"completed|stopped early \(ASHA\)|failed: \S.*")
EPOCH_LINE = re.compile(r"\[(\w+_\d{5})\] epoch (\d+)/\d+ loss")
RESTARTED = re.compile(r"^trial \S+ restarted from a checkpoint", re.M)  # the live view's line for a retried trial
ENDED = re.compile(r"^trial \S+ (completed|stopped|failed) after", re.M)


@pytest.fixture(scope="module")
def soak(tmp_path_factory):
    """The S3 server, Fashion-MNIST's first 1000 train / 500 test images prepared on it, and the cluster (started
    inside the S3 server's environment: its workers inherit the endpoint and keys)."""
    import gzip

    import numpy as np

    from raysl.ingest.prepare import prepare

    raw = require_fashion_mnist()
    source = tmp_path_factory.mktemp("soak-fmnist")
    for prefix, count in (("train", 1000), ("t10k", 500)):
        for kind, skip in (("images-idx3", 16), ("labels-idx1", 8)):
            data = np.frombuffer(gzip.decompress((raw / f"{prefix}-{kind}-ubyte.gz").read_bytes())[skip:], np.uint8)
            _write_idx(source / f"{prefix}-{kind}-ubyte.gz", data.reshape(-1, 28, 28)[:count] if skip == 16 else data[:count])
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server: a log record per request otherwise
    with moto_s3(BUCKET):
        data = f"s3://{BUCKET}/data/fmnist"
        prepare("fashion-mnist", str(source), data, progress=False, workers=1)
        with own_cluster(augment_cpus=2, train_cpus=2, train_nodes=4, augment_nodes=2) as cluster:
            yield {"cluster": cluster, "data": data, "tmp": tmp_path_factory.mktemp("soak")}


@contextlib.contextmanager
def own_cluster(**shape):
    """A LocalCluster of `shape` in the cluster tests' environment (started inside whatever environment is set now,
    e.g. the S3 server's); after it, every process of every node (the head's too) must have ended."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in _cluster_env().items():
            patch.setenv(key, value)
        patch.delenv("RAY_ADDRESS", raising=False)
        cluster = LocalCluster(**shape)
        try:
            yield cluster
        finally:
            cluster.shutdown()
    wait_for(lambda: not cluster.survivors(), 60, f"the cluster's processes to end: {cluster.survivors()}")


def sweep_file(soak: dict, name: str) -> Path:
    base = {
        "data": {"path": soak["data"]},
        "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
        "method": {"name": "simclr", "temperature": 0.2},
        "optimizer": {"name": "adamw", "lr": 0.01}, "schedule": {"warmup_epochs": 0},
        "epochs": EPOCHS, "batch_size": 64, "evaluation": {"bank_limit": 1000, "query_limit": 500},
        "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25, "torch_threads": 1, "augment_on": AUGMENT,
                      **({"train_on": TRAIN} if LOOP == "train" else {})},
        "max_failures": 10,  # Train's restarts of a killed worker, per trial attempt
    }
    return write_yaml(soak["tmp"] / f"{name}.yaml", {
        "base": base,
        "search": {"method": {"grid": [{"name": "simclr", "temperature": 0.2},
                                       {"name": "moco", "temperature": 0.2, "queue_size": 256}]},
                   "optimizer.lr": {"grid": [0.003, 0.01, 0.03]}, "optimizer.weight_decay": {"grid": [0.0001, 0.001]}},
        "num_samples": SAMPLES, "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2},
        "max_concurrent_trials": CONCURRENT, "trial_retries": 10,
        "storage_path": f"s3://{BUCKET}/results", "name": name,
    })


def start_sweep(soak: dict, name: str, *extra: str):
    log = soak["tmp"] / f"{name}{'-resume' if extra else ''}.log"
    return start_raysl("sweep", str(sweep_file(soak, name)), *extra, cluster=soak["cluster"], log=log), log


def finish(process, log: Path, started: float) -> dict:
    code = process.wait(timeout=SWEEP_TIMEOUT_S)
    return {"exit": code, "seconds": time.monotonic() - started, "log": log.read_text()}


def run_sweep(soak: dict, name: str) -> dict:
    started = time.monotonic()
    return finish(*start_sweep(soak, name), started)


@pytest.fixture(scope="module")
def baseline(soak):
    """The sweep undisturbed, BASELINES times: wall seconds and best kNN of each."""
    runs = []
    for number in range(1, BASELINES + 1):
        run = run_sweep(soak, f"baseline{number}")
        assert run["exit"] == 0, run["log"][-4000:]
        audit = audit_experiment(soak, f"baseline{number}")
        runs.append({"seconds": run["seconds"], "best": audit["best"], "epochs": audit["reported"]})
        print(f"baseline {number}: {run['seconds']:.0f} s, best kNN {audit['best']:.4f}, {audit['reported']} trial-epochs", flush=True)
    return runs


# ----------------------------------------------------------------------------- reading an experiment back


def local_copy(soak: dict, name: str) -> Path:
    import pyarrow.fs as pafs

    target = soak["tmp"] / "experiments" / name
    target.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(f"{BUCKET}/results/{name}", str(target), source_filesystem=pafs.S3FileSystem(
        endpoint_override=os.environ["AWS_ENDPOINT_URL"], region="us-east-1"), destination_filesystem=pafs.LocalFileSystem())
    return target


def tensorboard_epochs(trial_dir: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    epochs = []
    for events in sorted(trial_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if "ray/tune/epoch" in accumulator.Tags()["scalars"]:
            epochs += [int(event.value) for event in accumulator.Scalars("ray/tune/epoch")]
    return epochs


def epochs_problem(epochs: list[int]) -> str | None:
    """None when `epochs` is 1..N in order, each once; else what is wrong."""
    if epochs == list(range(1, len(epochs) + 1)):
        return None
    twice = sorted(epoch for epoch, count in collections.Counter(epochs).items() if count > 1)
    missing = sorted(set(range(1, max(epochs, default=0) + 1)) - set(epochs))
    return ", ".join(filter(None, [f"twice {twice}" if twice else "", f"missing {missing}" if missing else "",
                                   "out of order" if not twice and not missing else ""]))


def trained_epochs(cluster: LocalCluster, trial_ids: set[str]) -> collections.Counter:
    """(trial, epoch) -> how often rank 0 finished training and monitoring it, from every node's worker logs (a
    removed node's files stay on disk)."""
    counts = collections.Counter()
    for path in {path.resolve() for path in Path(cluster.root).glob("n*/session_*/logs/worker-*.out")}:  # and session_latest
        for trial, epoch in EPOCH_LINE.findall(path.read_text(errors="replace")):
            if trial in trial_ids:
                counts[trial, int(epoch)] += 1
    return counts


def audit_experiment(soak: dict, name: str) -> dict:
    """Everything the checks read: per trial its status, reported epochs (result.json, TensorBoard) and problems,
    every checkpoint loaded, epochs trained twice; the best kNN."""
    from raysl.report.experiment import ASHA_STOPS, load_experiment
    from raysl.training.checkpoint import backbone_of_state, load_checkpoint

    local = local_copy(soak, name)
    rows = read_leaderboard(local)
    experiment = load_experiment(str(local))
    # each trial's directory as Tune's newest experiment state names it (not always trial_<id>: a resumed sweep can
    # make trial_<id>_<hex>), read here rather than through raysl.report, whose reading is under test
    state = json.loads(max(local.glob("experiment_state-*.json")).read_text())
    named = {info["trial_id"]: info["relative_logdir"] for info in
             (json.loads(entry[0] if isinstance(entry, list) else entry) for entry in state["trial_data"])}
    stops = json.loads((local / ASHA_STOPS).read_text()) if (local / ASHA_STOPS).exists() else {}
    trials, problems, loaded, unloadable = {}, [], 0, []
    for row in rows:
        trial, status = row["trial"], row["status"]
        directory = local / named.get(trial, f"trial_{trial}")
        if not TERMINAL.fullmatch(status):
            problems.append(f"{trial}: status {status!r} is not terminal with a reason")
        result = directory / "result.json"
        lines = [json.loads(line) for line in (result.read_text().splitlines() if result.exists() else []) if line.strip()]
        reported = [int(line["epoch"]) for line in lines if "epoch" in line]
        for where, epochs in (("result.json", reported), ("TensorBoard", tensorboard_epochs(directory))):
            if problem := epochs_problem(epochs):
                problems.append(f"{trial}: {where} epochs {epochs}: {problem} ({directory.name})")
        last = max(reported, default=0)
        if str(last) != row["epochs"]:
            problems.append(f"{trial}: the leaderboard says {row['epochs']} epochs, {directory.name}/result.json {last}")
        if (status == "completed") != (last == EPOCHS) or (status.startswith("stopped") and not 1 <= last < EPOCHS):
            problems.append(f"{trial}: status {status!r} but {last} of {EPOCHS} epochs reported")
        if status.startswith("stopped early (ASHA)") and trial not in stops:  # else the status is a guess (trial_status)
            problems.append(f"{trial}: {status!r} but not in {ASHA_STOPS}, where the sweep records ASHA's stops")
        run_dir = local / "train" / trial  # a TorchTrainer's checkpoints; a loop in the trial keeps them beside result.json
        for checkpoint in checkpoints(run_dir if run_dir.is_dir() else directory):
            try:
                backbone_of_state(load_checkpoint(str(checkpoint)), str(checkpoint))
                loaded += 1
            except Exception as error:  # noqa: BLE001  (named in the report)
                unloadable.append(f"{checkpoint.relative_to(local)}: {error}")
        trials[trial] = {"status": status, "epochs": last}
    if len(rows) != TRIALS:
        problems.append(f"{len(rows)} trials in the leaderboard, the search space has {TRIALS}")
    trained = trained_epochs(soak["cluster"], set(trials))
    best = max((float(row["knn_top1"]) for row in rows if row.get("knn_top1")), default=float("nan"))
    return {"local": local, "trials": trials, "problems": problems + unloadable, "loaded": loaded, "unloadable": unloadable,
            "reported": sum(t["epochs"] for t in trials.values()), "trained": sum(trained.values()),
            "twice": sum(count - 1 for count in trained.values()), "best": best, "experiment": experiment}


# ----------------------------------------------------------------------------- the report


def report(soak: dict, phase: str, chaos: Chaos, sweeps: dict[str, list[dict]], baseline: list[dict]) -> tuple[str, list[str]]:
    """The phase's tables and the list of what failed its checks."""
    audits = {name: audit_experiment(soak, name) for name in sweeps}
    left = leftovers(soak["cluster"])
    failures = [f"{name}: {problem}" for name, audit in audits.items() for problem in audit["problems"]]
    counts = chaos.counts()
    parts = [f"== {phase}: {chaos.seconds / 60:.1f} min of chaos, a kill every {INTERVAL_S:.0f} s (cap {MAX_KILLS}), "
             f"{len(chaos.replaced)} nodes replaced after {NODE_DOWN_S:.0f} s",
             table(["kills by kind", "count"], [[kind, counts[kind]] for kind in sorted(counts)] + [["all", sum(counts.values())]])]
    base_seconds = sum(run["seconds"] for run in baseline) / len(baseline)
    bests = [run["best"] for run in baseline]
    low, high = min(bests) - KNN_TOLERANCE, max(bests) + KNN_TOLERANCE
    rows = []
    for name, runs in sweeps.items():
        audit = audits[name]
        statuses = collections.Counter(re.sub(r"^failed: .*", "failed", t["status"]) for t in audit["trials"].values())
        seconds = sum(run["seconds"] for run in runs)
        rows.append([name, " then ".join(str(run["exit"]) for run in runs), f"{seconds:.0f} s ({seconds / base_seconds:.2f}x)",
                     ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())),
                     sum(len(RESTARTED.findall(run["log"])) for run in runs), audit["reported"],
                     audit["trained"], audit["twice"], f"{audit['loaded']} ({len(audit['unloadable'])} not)",
                     f"{audit['best']:.4f}", "yes" if low <= audit["best"] <= high else "NO"])
        failures += [f"{name}: exit {run['exit']}" for run in runs[-1:] if run["exit"] != 0]
        if not low <= audit["best"] <= high:
            failures.append(f"{name}: best kNN {audit['best']:.4f} outside the baseline's [{low:.4f}, {high:.4f}]")
    rows.append([f"baseline (mean of {len(baseline)})", "0", f"{base_seconds:.0f} s", "", "", sum(r["epochs"] for r in baseline) / len(baseline),
                 "", "", "", " / ".join(f"{best:.4f}" for best in bests), f"[{low:.4f}, {high:.4f}]"])
    parts.append(table(["sweep", "exit", "wall time (vs baseline)", "trials by status", "restarts", "epochs reported", "epochs trained",
                        "trained twice", "checkpoints loaded", "best kNN", "within baseline"], rows))
    for name, audit in audits.items():
        failed = [[trial, t["status"], t["epochs"]] for trial, t in audit["trials"].items() if t["status"].startswith("failed")]
        if failed:
            parts.append(table([f"{name}: failed trials", "status", "epochs"], failed))
    parts.append(table(["left over", "count", "which"], [[kind, len(items), "; ".join(items[:4])] for kind, items in left.items()]))
    failures += [f"left over: {kind}: {items}" for kind, items in left.items() if items and kind != "detached actors"]
    parts.append(table(["check", "result"], [["problems", len(failures)]] + [[f"{number}", text[:160]] for number, text in enumerate(failures, 1)]))
    text = "\n\n".join(parts) + "\n"
    for name, audit in audits.items():
        (audit["local"] / "soak_report.txt").write_text(text)
        write_text(f"s3://{BUCKET}/results/{name}/soak_report.txt", text)
    return text, failures


def new_chaos(soak: dict) -> Chaos:
    return Chaos(soak["cluster"], interval_s=INTERVAL_S, duration_s=float("inf"), max_kills=MAX_KILLS,
                 node_down_s=NODE_DOWN_S, seed=SEED, log=lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))


# ----------------------------------------------------------------------------- the phases


@pytest.mark.timeout(4 * SWEEP_TIMEOUT_S)
def test_phase_1_sweeps_under_chaos(soak, baseline):
    chaos, sweeps = new_chaos(soak), {}
    try:
        while not sweeps or (chaos.seconds < MINUTES * 60 and chaos.active):  # another sweep while under the minutes
            name = f"chaos{len(sweeps) + 1}"
            started = time.monotonic()
            process, log = start_sweep(soak, name)
            chaos.run(until=lambda: process.poll() is not None)
            sweeps[name] = [finish(process, log, started)]
    finally:
        chaos.stop()
    text, failures = report(soak, "phase 1 (sweeps under chaos)", chaos, sweeps, baseline)
    print("\n" + text, flush=True)
    assert chaos.seconds >= MINUTES * 60 or len(chaos.kills) >= MAX_KILLS
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(4 * SWEEP_TIMEOUT_S)
def test_phase_2_driver_sigkilled_mid_soak_then_resume(soak, baseline):
    chaos, name = new_chaos(soak), "driverkill"
    try:
        started = time.monotonic()
        process, log = start_sweep(soak, name)
        deadline = started + SWEEP_TIMEOUT_S
        chaos.run(until=lambda: len(ENDED.findall(log.read_text())) >= TRIALS // 3 or process.poll() is not None
                  or time.monotonic() > deadline)
        assert process.poll() is None, "the sweep ended before its driver could be killed:\n" + log.read_text()[-3000:]
        process.send_signal(signal.SIGKILL)
        killed = finish(process, log, started)
        chaos.note("driver", f"raysl sweep pid {process.pid}")
        started = time.monotonic()
        process, log = start_sweep(soak, name, "--resume")
        chaos.run(until=lambda: process.poll() is not None)
        resumed = finish(process, log, started)
    finally:
        chaos.stop()
    assert "resuming sweep at" in resumed["log"], resumed["log"][-3000:]
    text, failures = report(soak, "phase 2 (driver SIGKILLed mid-soak, then --resume)", chaos, {name: [killed, resumed]}, baseline)
    print("\n" + text, flush=True)
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(600)
def test_the_killer_removes_and_replaces_nodes_and_leaves_nothing():
    """raysl.ray_glue.chaos itself, on a small cluster of its own: node kills at random, each node brought back with
    its role, no process of a removed node left running, nothing left on the cluster."""
    with own_cluster(augment_cpus=1, train_cpus=1, train_nodes=2) as cluster:
        before = collections.Counter(cluster.roles.values())
        chaos = Chaos(cluster, interval_s=3, max_kills=3, node_down_s=5, kinds=("node",), seed=0)
        chaos.run(until=lambda: not chaos.active and not chaos.down)
        chaos.stop()
        assert chaos.counts() == {"node": 3} and len(chaos.replaced) == 3
        assert collections.Counter(cluster.roles.values()) == before  # every role back to its count
        left = leftovers(cluster, wait_s=60)
        assert not any(items for kind, items in left.items() if kind != "detached actors"), left
