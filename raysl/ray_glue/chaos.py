"""Chaos on a local multi-node cluster (raysl.ray_glue.local_cluster), as Ray's release chaos tests make it
(ray._private.test_utils: ResourceKillerActor and its RayletKiller / WorkerKillerActor: one kill at a random moment
of every interval, up to a cap), and what a run under chaos may not leave behind.

Ray's killers are actors on the cluster: they would be leftovers themselves, WorkerKillerActor kills running tasks
(not the long-lived actors a sweep runs in), and RayletKiller stops a raylet behind cluster_utils' back, so no node
ever replaces it. Here the process that owns the cluster kills, at random, one of:

- `train_worker`: a Ray Train worker process (SIGKILL), or a Tune trial running its loop itself when there is none;
- `augment_actor`: an augmentation actor process of Ray Data (SIGKILL; its class is AugmentViews);
- `node`: a whole worker node, its raylet and every process of it SIGKILLed (LocalCluster.remove_node), a fresh
  node of the same role added `node_down_s` later, as an autoscaler replaces a preempted machine (at least
  `keep_per_role` nodes of each role stay up, as min_workers would keep them).

Imports raysl.ray_glue.local_cluster.
"""

from __future__ import annotations

import collections
import os
import random
import signal
import time
from dataclasses import dataclass

from raysl.ray_glue.local_cluster import LocalCluster

KINDS = ("train_worker", "augment_actor", "node")
TRAIN_WORKER = "RayTrainWorker"
TRIAL_ACTOR = "ImplicitFunc"  # a Tune function trial (it runs the loop itself with one worker and no train_on)
AUGMENT_ACTOR = "AugmentViews"  # Ray Data names its actors MapWorker(MapBatches(AugmentViews))


@dataclass
class Kill:
    at: float
    """Seconds since the chaos started."""
    kind: str
    target: str
    """The actor (class, id) or node killed."""
    role: str
    """The role of the node it ran on."""


class Chaos:
    """Kills at random every `interval_s` (at a random moment of each interval) while it has run under `duration_s`
    and made fewer than `max_kills`, and brings removed nodes back after `node_down_s`. It runs in the caller's
    thread (`run(until)`): Ray starts a node only from the main thread (it sets signal handlers). `stop()` brings
    back every node still down. `kills` is the record; `note()` adds a kill made elsewhere (a driver SIGKILLed)."""

    def __init__(self, cluster: LocalCluster, *, interval_s: float = 30.0, duration_s: float = 600.0,
                 max_kills: int | None = None, node_down_s: float = 60.0, kinds: tuple[str, ...] = KINDS,
                 keep_per_role: int = 1, seed: int | None = None, log=print):
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kinds of kill {sorted(unknown)}; use {', '.join(KINDS)}")
        self.cluster, self.interval_s, self.duration_s, self.max_kills = cluster, interval_s, duration_s, max_kills
        self.node_down_s, self.kinds, self.keep_per_role, self.log = node_down_s, kinds, keep_per_role, log
        self.random = random.Random(seed)
        self.kills: list[Kill] = []
        self.replaced: list[tuple[float, str]] = []  # (seconds since the start, role) of every node brought back
        self.down: list[tuple[float, str]] = []  # (due, role) of nodes removed and not yet replaced
        self.started = self.ended = 0.0
        self.interval = 0  # the interval the next kill falls in
        self.next_kill = 0.0

    @property
    def active(self) -> bool:
        """Whether it still kills: under `duration_s` since the start and under `max_kills`."""
        return (not self.ended and time.monotonic() - self.started < self.duration_s
                and (self.max_kills is None or len(self.kills) < self.max_kills))

    @property
    def seconds(self) -> float:
        """How long it has killed (so far)."""
        return (self.ended or time.monotonic()) - self.started if self.started else 0.0

    def counts(self) -> collections.Counter:
        return collections.Counter(kill.kind for kill in self.kills)

    def run(self, until, poll_s: float = 1.0) -> None:
        """Kill and bring nodes back until `until()` is true (it starts the clock on the first call)."""
        if not self.started:
            self.started = time.monotonic()
            self._schedule()
        while not until():
            self.step()
            time.sleep(poll_s)

    def step(self) -> None:
        """Bring back the nodes due; make the kill due, if any."""
        for entry in [entry for entry in self.down if entry[0] <= time.monotonic()]:
            self.down.remove(entry)
            self._replace(entry[1])
        if not self.ended and not self.active:
            self.ended = time.monotonic()
        if self.ended or time.monotonic() < self.next_kill:
            return
        try:
            self._kill_one()
        except Exception as error:  # noqa: BLE001  (the State API timed out, the node went meanwhile: next time)
            self.log(f"chaos: a kill failed ({type(error).__name__}: {error}); trying again next interval")
        self._schedule()

    def stop(self) -> None:
        """End the kills and bring back every node still down (now)."""
        if not self.ended:
            self.ended = time.monotonic()
        while self.down:
            self._replace(self.down.pop(0)[1], retry=False)

    def note(self, kind: str, target: str, role: str = "") -> None:
        """Record a kill made elsewhere (e.g. the sweep's driver SIGKILLed)."""
        self.kills.append(Kill(time.monotonic() - self.started, kind, target, role))
        self.log(f"chaos: {kind} {target} killed")

    def _schedule(self) -> None:
        """The next kill: at a random moment of the next interval (ResourceKillerActor's rhythm)."""
        self.next_kill = self.started + (self.interval + self.random.random()) * self.interval_s
        self.interval += 1

    def _replace(self, role: str, retry: bool = True) -> None:
        try:
            node = self.cluster.replace_node(role)
        except Exception as error:  # noqa: BLE001  (a raylet slow to come up on busy cores: try again)
            if not retry:
                raise
            self.log(f"chaos: a fresh {role} node did not come up ({type(error).__name__}: {error}); trying again in 10 s")
            self.down.append((time.monotonic() + 10, role))
            return
        self.replaced.append((time.monotonic() - self.started, role))
        self.log(f"chaos: a fresh {role} node {node.node_id[:8]} replaces a removed one")

    def _kill_one(self) -> None:
        actors = self._actors()
        choices = {
            "train_worker": [a for a in actors if a.class_name == TRAIN_WORKER]
            or [a for a in actors if a.class_name == TRIAL_ACTOR],
            "augment_actor": [a for a in actors if AUGMENT_ACTOR in a.class_name],
            "node": self._removable_nodes(),
        }
        kinds = [kind for kind in self.kinds if choices[kind]]
        if not kinds:
            self.log("chaos: nothing to kill this interval")
            return
        kind = self.random.choice(kinds)
        victim = self.random.choice(choices[kind])
        if kind == "node":
            self._kill_node(victim)
            return
        roles = {node.node_id: role for node, role in self.cluster.roles.items()}
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself meanwhile: not a kill
            return
        role = roles.get(victim.node_id, "?")
        self.kills.append(Kill(time.monotonic() - self.started, kind, f"{victim.class_name} pid {victim.pid}", role))
        self.log(f"chaos: SIGKILL {victim.class_name} pid {victim.pid} ({kind}, on a {role} node)")

    def _kill_node(self, node) -> None:
        from ray.util.state import list_actors

        role = self.cluster.roles[node]
        # what it hosts that outlives jobs (Ray Data's detached singletons are pinned to the node that made them)
        detached = sorted({a.class_name for a in list_actors(
            address=self.cluster.job_server, filters=[("state", "=", "ALIVE"), ("node_id", "=", node.node_id)],
            detail=True, limit=10000, raise_on_missing_output=False) if a.is_detached})
        self.cluster.remove_node(node)
        self.down.append((time.monotonic() + self.node_down_s, role))
        hosted = f" hosting {', '.join(detached)}" if detached else ""
        self.kills.append(Kill(time.monotonic() - self.started, "node", f"node {node.node_id[:8]}{hosted}", role))
        self.log(f"chaos: removed {role} node {node.node_id[:8]}{hosted} (raylet SIGKILLed); a fresh one in {self.node_down_s:.0f} s")

    def _actors(self) -> list:
        from ray.util.state import list_actors

        # alive, or still in their constructor (a process importing torch on busy cores can take a minute there)
        return [actor for actor in list_actors(address=self.cluster.job_server, filters=[("state", "!=", "DEAD")],
                                               limit=10000, raise_on_missing_output=False)
                if actor.pid and actor.state in ("ALIVE", "PENDING_CREATION")]

    def _removable_nodes(self) -> list:
        by_role = collections.Counter(self.cluster.roles.values())
        return [node for node, role in self.cluster.roles.items() if by_role[role] > self.keep_per_role]


def leftovers(cluster: LocalCluster, *, wait_s: float = 90.0) -> dict[str, list[str]]:
    """What a finished run left on the cluster, waited for up to `wait_s` to clear (Ray removes a dead job's groups
    and actors in the background): placement groups not REMOVED, actors not DEAD (detached ones apart: Ray Data's
    stats and location actors live with the cluster by design, and raysl makes none), nodes the State API calls
    ALIVE that are not in the cluster (a removed node's raylet still registered), and processes of removed nodes
    still running. Empty lists (but "detached actors"): nothing left."""
    from ray.util.state import list_actors, list_nodes, list_placement_groups

    deadline = time.monotonic() + wait_s
    while True:
        groups = [f"{g.placement_group_id[:8]} {g.state}"
                  for g in list_placement_groups(address=cluster.job_server, limit=10000, raise_on_missing_output=False)
                  if g.state != "REMOVED"]
        actors = [a for a in list_actors(address=cluster.job_server, limit=10000, detail=True, raise_on_missing_output=False)
                  if a.state != "DEAD"]
        live = {node.node_id for node in cluster.roles} | {cluster.cluster.head_node.node_id}
        nodes = [f"{n.node_id[:8]} {(n.labels or {}).get('raysl/role', '')}"
                 for n in list_nodes(address=cluster.job_server, limit=1000, raise_on_missing_output=False)
                 if n.state == "ALIVE" and n.node_id not in live]
        found = {"placement groups": groups,
                 "actors": [f"{a.class_name} {a.actor_id[:8]} {a.state}" for a in actors if not a.is_detached],
                 "raylets": nodes,
                 "processes of removed nodes": [f"pid {pid} ({name})" for pid, name in cluster.survivors().items()]}
        if not any(found.values()) or time.monotonic() > deadline:
            found["detached actors"] = [f"{a.class_name} ({a.ray_namespace})" for a in actors if a.is_detached]
            return found
        time.sleep(2)


def table(header: list[str], rows: list[list]) -> str:
    """A plain text table (columns padded to their widest cell)."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join([lines[0], "  ".join("-" * width for width in widths), *lines[1:]])
