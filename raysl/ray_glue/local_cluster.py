"""A real multi-node Ray cluster on this one machine: a head that runs no work, augment-role node(s) and train-role
node(s), each its own raylet process, as `ray up` would make them on a cloud. Worker nodes can be removed (their
raylet and every process of theirs SIGKILLed, as a preempted machine goes) and replaced by a fresh node of the same
role, as an autoscaler would (raysl.ray_glue.chaos does both at random).

Used by the cluster tests, the chaos soak and benchmarks; also handy by hand:
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
    """Head (0 CPUs, dashboard + job server on loopback), `augment_nodes` augment nodes (`augment`: the first),
    `train_nodes` train nodes (`train`: the first ones, as made). `roles` maps every live worker node to its role."""

    def __init__(self, augment_cpus: float = 2, train_cpus: float = 2, train_nodes: int = 1, head_cpus: float = 0,
                 augment_nodes: int = 1):
        from ray.cluster_utils import Cluster

        # Each node gets its own temp dir, as separate machines would: nodes sharing one would share
        # runtime_resources/, and one node's runtime-env garbage collection would delete the working
        # dir of a job still running on another (seen: a submitted sweep's driver lost its cwd).
        self.root = tempfile.mkdtemp(prefix="raysl-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
        self.nodes = 0
        self.cpus = {"augment": augment_cpus, "train": train_cpus}
        self.roles: dict = {}  # live worker node -> its role
        self.removed: list = []  # (node, pids of its processes when it was removed), in order
        self.dashboard_port = free_port()
        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_cpus, "include_dashboard": True, "temp_dir": self._temp_dir(),
                "dashboard_host": "127.0.0.1", "dashboard_port": self.dashboard_port, "labels": {ROLE: "head"},
            },
        )
        self.augment = [self.add_node("augment", augment_cpus) for _ in range(augment_nodes)][0]
        self.train = [self.add_node("train", train_cpus) for _ in range(train_nodes)]
        self.cluster.wait_for_nodes()

    def add_node(self, role: str, cpus: float | None = None, timeout_s: float = 180):
        """A worker node of `role` (`cpus`: that role's CPUs when left out), its raylet up and registered (waited for
        up to `timeout_s`: cluster_utils' own 30 s is too short on busy cores). Call it from the main thread: Ray sets
        signal handlers when it starts a node."""
        import ray._private.services

        # Own log monitor too (cluster_utils starts one on the head only): worker output on this node reaches drivers.
        node = self.cluster.add_node(num_cpus=self.cpus.get(role, 1) if cpus is None else cpus, labels={ROLE: role},
                                     temp_dir=self._temp_dir(), include_log_monitor=True, wait=False)
        self.roles[node] = role  # before the wait: a node slow to register is still this cluster's
        ray._private.services.wait_for_node(node.gcs_address, node.plasma_store_socket_name, timeout_s)
        return node

    def _temp_dir(self) -> str:
        self.nodes += 1
        return f"{self.root}/n{self.nodes}"

    def remove_node(self, node) -> None:
        """SIGKILL the node's raylet and its other processes (no graceful drain), as a preempted machine goes. The
        pids of its processes then (raylet, agents, workers) are kept in `removed`: none may outlive it."""
        pids = node_pids(node)
        self.cluster.remove_node(node, allow_graceful=False)
        self.roles.pop(node, None)
        self.removed.append((node, pids))

    def replace_node(self, role: str):
        """A fresh node of `role` in place of a removed one, as an autoscaler replaces a preempted machine."""
        return self.add_node(role)

    def survivors(self) -> dict[int, str]:
        """pid -> what it was, of every process of a removed (or shut down) node still alive: none, or it leaked."""
        table = process_table()
        return {pid: name for _, pids in self.removed for pid, (name, started) in pids.items()
                if pid in table and table[pid][1] == started and table[pid][2] != "Z"}

    @property
    def address(self) -> str:
        return self.cluster.address

    @property
    def job_server(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def shutdown(self) -> None:
        import ray

        ray.shutdown()  # a driver connected to the head would stop the head's removal
        # every node's processes, the head's too, recorded first: survivors() says which outlived the shutdown
        for node in [*self.roles, self.cluster.head_node]:
            self.removed.append((node, node_pids(node)))
        self.roles.clear()
        self.cluster.shutdown()
        shutil.rmtree(self.root, ignore_errors=True)


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time in clock ticks, state letter) of every process now, from /proc (Linux)."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:  # gone meanwhile
                continue
            table[int(entry)] = (int(fields[1]), int(fields[19]), fields[0])
    return table


def node_pids(node) -> dict[int, tuple[str, int]]:
    """pid -> (what it is, start time) of a cluster_utils node's processes and all their descendants (its raylet's
    workers: Train workers, Tune trials, augmentation actors); the start time tells a pid reused later apart."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found = {}
    for kind, infos in node.all_processes.items():
        stack = [(info.process.pid, kind) for info in infos]
        while stack:
            pid, name = stack.pop()
            if pid in table and pid not in found:
                found[pid] = (name, table[pid][1])
                stack += [(child, f"{kind} child") for child in children.get(pid, [])]
    return found


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    cluster = LocalCluster()
    print(f"RAY_ADDRESS={cluster.address}\njob server: {cluster.job_server}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        cluster.shutdown()
