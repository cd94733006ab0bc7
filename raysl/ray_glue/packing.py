"""How many trials fit at once: the nodes (this machine, the cluster Ray is connected to, or a `ray up` file's
node types) against a sweep's per-trial resources, checked before Ray starts; no Ray imported here.

Imports raysl.config and raysl.errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from raysl.config import DRIVER_CPUS
from raysl.errors import UserError


@dataclass
class NodeShape:
    """What one kind of node offers (CPUs, GPUs) and how many of them there can be."""

    name: str
    cpus: float
    gpus: float = 0.0
    count: int = 1


def local_node() -> NodeShape:
    """This machine: its cores and its CUDA GPUs."""
    import torch

    return NodeShape("this machine", float(os.cpu_count() or 1), float(torch.cuda.device_count()))


def cluster_file_nodes(path: str) -> list[NodeShape]:
    """The node types of a `ray up` cluster file (available_node_types: resources, max_workers; the head once)."""
    from raysl.config import read_yaml

    data = read_yaml(path)
    types = data.get("available_node_types")
    if not isinstance(types, dict) or not types:
        raise UserError(f"{path}: no available_node_types (a `ray up` cluster file has them)")
    head = data.get("head_node_type")
    nodes = []
    for name, spec in types.items():
        resources = (spec or {}).get("resources") or {}
        count = 1 if name == head else int((spec or {}).get("max_workers", 0) or 0)
        if count and (resources.get("CPU") or resources.get("GPU")):
            nodes.append(NodeShape(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), count))
    return nodes


def trials_at_once(sweep, nodes: list[NodeShape]) -> tuple[int, str]:
    """How many of the sweep's trials run at the same time on these nodes, and what limits it: each trial's Train
    workers (cpus_per_worker and gpus_per_worker each, on one node: fractional GPUs pack onto one GPU) and
    augmentation actors (data_cpus each) placed first-fit, its driver anywhere, and base.resources.data_cpus
    left free for Ray Data's read tasks (without it every trial waits for data: the sweep hangs)."""
    resources = sweep.base.resources
    free = [[node.cpus, node.gpus] for node in nodes for _ in range(node.count)]
    wanted = min(sweep.max_concurrent_trials, sweep.trial_count)
    headroom = resources.data_cpus

    def place(cpus: float, gpus: float) -> bool:
        for capacity in free:
            if capacity[0] + 1e-9 >= cpus and capacity[1] + 1e-9 >= gpus:
                capacity[0] -= cpus
                capacity[1] -= gpus
                return True
        return False

    placed = 0
    while placed < wanted:
        saved = [list(capacity) for capacity in free]
        fits = all(place(resources.cpus_per_worker, resources.gpus_per_worker) for _ in range(resources.workers))
        fits = fits and all(place(resources.data_cpus, 0.0) for _ in range(resources.data_actors))
        fits = fits and (sweep.in_trial or place(DRIVER_CPUS, 0.0))  # a trial running its loop itself has no driver
        if not fits or sum(capacity[0] for capacity in free) + 1e-9 < headroom:
            free[:] = saved
            break
        placed += 1
    if placed == wanted:
        return placed, "max_concurrent_trials" if wanted == sweep.max_concurrent_trials else "the trial count"
    total_gpus = sum(capacity[1] for capacity in free)
    short = "GPUs" if resources.gpus_per_worker > total_gpus + 1e-9 else "CPUs"
    return placed, short


def check_packing(sweep, nodes: list[NodeShape], where: str, *, strict: bool = True, log=print) -> int:
    """A UserError when not one trial fits on `nodes` (naming what it asks for) or, with `strict` (nodes known
    exactly: this machine), when fewer trials fit CPU-wise than run at once (the sweep would hang); else a note
    of how many run at once and what limits them. Returns that number."""
    resources = sweep.base.resources
    count, limit = trials_at_once(sweep, nodes)
    cpus, gpus = sweep.trial_resources
    asks = (f"{resources.workers} Train worker(s) x ({resources.cpus_per_worker:g} CPU"
            + (f", {resources.gpus_per_worker:g} GPU" if resources.gpus_per_worker else "") + f") + "
            f"{resources.data_actors} augmentation actor(s) x {resources.data_cpus:g} CPU"
            + ("" if sweep.in_trial else f" + {DRIVER_CPUS} driver"))
    shapes = ", ".join(f"{node.count} x {node.name} ({node.cpus:g} CPU, {node.gpus:g} GPU)" for node in nodes)
    if count == 0:
        raise UserError(f"base.resources: one trial asks for {asks} ({cpus:g} CPUs, {gpus:g} GPUs) and "
                        f"{resources.data_cpus:g} CPU left for Ray Data's reads, which {where} cannot give ({shapes}); "
                        "lower cpus_per_worker / gpus_per_worker / data_cpus / workers")
    wanted = min(sweep.max_concurrent_trials, sweep.trial_count)
    if strict and limit == "CPUs" and count < wanted:
        # Tune would start every trial's driver; those whose workers cannot be placed hold CPUs while they wait,
        # and Ray Data's read tasks get none: every trial waits for data, the sweep hangs.
        raise UserError(f"max_concurrent_trials / base.resources: {wanted} trials at once do not fit on {where} "
                        f"({shapes}) with {resources.data_cpus:g} CPU left for Ray Data's reads; {count} do (each "
                        f"{asks}). Lower max_concurrent_trials to {count}, or base.resources.cpus_per_worker / data_cpus")
    per_gpu = f"; {1 / resources.gpus_per_worker:g} workers share a GPU" if 0 < resources.gpus_per_worker < 1 else ""
    log(f"note: {count} trial(s) at once on {where} ({shapes}), limited by {limit}: each trial {asks}{per_gpu}")
    if sweep.pbt_keys and sweep.trial_count > sweep.max_concurrent_trials:
        # the variant generator creates a trial only when fewer than max_concurrent_trials are live (PAUSED counts);
        # a population it has created in full waits for resources instead, and PBT picks whom to run next
        log(f"note: scheduler pbt: a population of {sweep.trial_count} with {count} trial(s) at once: a trial starts "
            f"only when one ends, so the first {count} exploit only each other and the rest start late "
            f"(benchmarks/search_compare.py); num_samples {count} keeps the whole population training together")
    return count
