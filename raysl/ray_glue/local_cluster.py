"""A real multi-node Ray cluster on this one machine: a head that runs no work, an augment-role
node and train-role node(s), each its own raylet process, as `ray up` would make them on a cloud.

Used by the cluster tests and benchmarks; also handy by hand:
    python -m raysl.ray_glue.local_cluster      # prints RAY_ADDRESS and the job server URL, Ctrl-C stops
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time

ROLE = "raysl/role"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalCluster:
    """Head (0 CPUs, dashboard + job server on loopback), one augment node, `train_nodes` train nodes."""

    def __init__(self, augment_cpus: float = 2, train_cpus: float = 2, train_nodes: int = 1, head_cpus: float = 0):
        from ray.cluster_utils import Cluster

        # Each node gets its own temp dir, as separate machines would: nodes sharing one would share
        # runtime_resources/, and one node's runtime-env garbage collection would delete the working
        # dir of a job still running on another (seen: a submitted sweep's driver lost its cwd).
        self.root = tempfile.mkdtemp(prefix="raysl-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        self.nodes = 0
        self.dashboard_port = free_port()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_cpus, "include_dashboard": True, "temp_dir": self._temp_dir(),
                "dashboard_host": "127.0.0.1", "dashboard_port": self.dashboard_port, "labels": {ROLE: "head"},
            },
        )
        self.augment = self.add_node("augment", augment_cpus)
        self.train = [self.add_node("train", train_cpus) for _ in range(train_nodes)]
        self.cluster.wait_for_nodes()

    def add_node(self, role: str, cpus: float):
        # Own log monitor too (cluster_utils starts one on the head only): worker output on this node reaches drivers.
        return self.cluster.add_node(num_cpus=cpus, labels={ROLE: role}, temp_dir=self._temp_dir(), include_log_monitor=True)

    def _temp_dir(self) -> str:
        self.nodes += 1
        return f"{self.root}/n{self.nodes}"

    def remove_node(self, node) -> None:
        self.cluster.remove_node(node, allow_graceful=False)

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def job_server(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def shutdown(self) -> None:
        import ray

        ray.shutdown()  # a driver connected to the head would stop the head's removal
        self.cluster.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    cluster = LocalCluster()
    print(f"RAY_ADDRESS={cluster.address}\njob server: {cluster.job_server}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.shutdown()
