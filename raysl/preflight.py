"""Checks before Ray starts or any resource is requested: where the data is (prepared on first use), and
that the data, the evaluation, init_from and the resources fit the config. A UserError names the field.

The CLI's validate / train / sweep / eval and the Python API (raysl.api) all call these; no Ray here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from raysl.config import DRIVER_CPUS, RunConfig
from raysl.errors import UserError
from raysl.storage import absolute_path, is_remote


def _resolve(path: str | None, kind: str | None, source: str | None, cache_dir: str, image_size: int | None, field: str,
             log=print) -> str:
    from raysl.data.prepare import ensure_prepared, read_manifest

    if path:
        path = absolute_path(path)  # as Ray Data will see it
        try:
            read_manifest(path)
        except UserError as error:
            raise UserError(f"{field}: {error}") from None
        return path
    try:
        return ensure_prepared(kind, source, absolute_path(cache_dir), image_size=image_size, log=log)
    except UserError as error:
        raise UserError(f"{field.rsplit('.', 1)[0]}.kind {kind}: {error}") from None


def resolve_data(run: RunConfig, log=print) -> str:
    """The prepared dataset's URI: data.path, or a cached copy of data.kind prepared on first use."""
    return _resolve(run.data.path, run.data.kind, run.data.source, run.data.cache_dir, run.data.image_size, "data.path", log)


def resolve_pool(run: RunConfig, log=print) -> list[str]:
    """The URIs of data.pool's datasets (prepared into data.cache_dir on first use), in order."""
    return [
        _resolve(entry.path, entry.kind, entry.source, run.data.cache_dir, None, f"data.pool.{index}.path", log)
        for index, entry in enumerate(run.data.pool)
    ]


def check_evaluation(run: RunConfig, data_uri: str, pool_uris: list[str], where: str = "") -> None:
    """What evaluation needs, before Ray starts: distinct datasets, label sets that fit the main dataset's
    classes with distinct names, and labels in every pool dataset (each is evaluated with kNN)."""
    from raysl.data.prepare import read_manifest
    from raysl.training.evaluation import label_sets_of

    uris = [data_uri, *pool_uris]
    for index, uri in enumerate(pool_uris):
        if uris.index(uri) <= index:
            raise UserError(f"{where}data.pool.{index}: {uri} is already in the pool (or is the main dataset); list each dataset once")
        if not read_manifest(uri)["class_names"]:
            raise UserError(f"{where}data.pool.{index}: {uri} has no labels, and every pool dataset is evaluated with kNN")
    try:
        names = [label_set.name for label_set in label_sets_of(run, read_manifest(data_uri))]
    except UserError as error:
        raise UserError(f"{where}{error}") from None
    if run.model.backbone.startswith("vit_"):  # built for the crop size: the evaluation images must have it too
        from raysl.data.pretraining import main_shape

        size = run.views.crops[0].size
        shape = main_shape(run, read_manifest(data_uri))
        if tuple(shape[:2]) != (size, size):
            raise UserError(f"{where}model.backbone {run.model.backbone} is built for {size} px crops, but the "
                            f"evaluation images of {data_uri} are {shape[0]}x{shape[1]}: set views.crops sizes to "
                            f"{shape[0]}, or prepare the dataset with --image-size {size}")
    for name in names:
        if names.count(name) > 1 or ":" in name or "/" in name:
            raise UserError(f"{where}evaluation.label_sets: the set name {name!r} is used twice or holds ':' or '/' "
                            "(label-map files name their set with `name:`, else their file name)")


def check_shards(uris: list[str], checksum: bool = False) -> None:
    """Every shard of these prepared datasets is there with the size its manifest records (one metadata call
    per shard); with `checksum`, also its sha256 (reads every byte). A UserError names each damaged shard."""
    from raysl.data.prepare import read_manifest
    from raysl.data.shards import require_intact

    for uri in dict.fromkeys(uris):
        require_intact(uri, read_manifest(uri), checksum=checksum)


def check_encoded(run: RunConfig, data_uri: str, pool_uris: list[str], where: str = "") -> None:
    """What an encoded (variable-size) main dataset allows: with views.where: trainer the Train worker decodes
    the stored files itself, so rows must reach it as files (no corruption, no pool)."""
    from raysl.data.prepare import read_manifest
    from raysl.data.rows import is_encoded

    if not is_encoded(read_manifest(data_uri)) or run.views.where != "trainer":
        return
    if run.data.corruption.active or pool_uris:
        raise UserError(f"{where}views.where: trainer decodes an encoded dataset's files on the Train worker, so it "
                        "cannot take data.corruption or data.pool (their rows are decoded images); use views.where: data")


def check_init_from(run: RunConfig, data_uri: str, where: str = "") -> None:
    """init_from's weights fit the run's backbone, before Ray starts (a UserError names the keys). The Trainer
    loads them (raysl.training.checkpoint.initialise_from) into the method it builds."""
    if not run.init_from:
        return
    import torch

    from raysl.data.prepare import read_manifest
    from raysl.data.rows import channels_of
    from raysl.methods import build_run_backbone
    from raysl.training.checkpoint import fitting_weights

    try:
        with torch.device("meta"):  # names and shapes only: no weights allocated, no method heads built
            backbone = build_run_backbone(run, channels_of(read_manifest(data_uri)))
        fitting_weights(backbone, run.init_from)
    except UserError as error:
        text = str(error)
        raise UserError(f"{where}{text}" if text.startswith("init_from") else f"{where}init_from: {text}") from None


def check_data_conditions(run: RunConfig, data_uri: str, pool_uris: list[str], where: str = "") -> None:
    """Data-dependent checks before Ray starts: the subset fits the train split (and its classes when
    balanced), an epoch holds a batch, and check_evaluation. `where` prefixes errors (a sweep's drawn value)."""
    from raysl.data.pretraining import plan_pretraining

    check_evaluation(run, data_uri, pool_uris, where)
    check_init_from(run, data_uri, where)
    check_encoded(run, data_uri, pool_uris, where)
    try:
        plan = plan_pretraining(run, data_uri, pool_uris)
    except UserError as error:
        raise UserError(f"{where}{error}") from None
    if plan.epoch_images < run.batch_size:
        raise UserError(f"{where}data: an epoch has {plan.epoch_images} pretraining images, fewer than batch_size "
                        f"{run.batch_size}; raise data.subset.count or set data.subset.epoch_size: full")


def check_sweep_data(sweep, data_uri: str, source: str) -> None:
    """check_data_conditions for the base and for every data / evaluation value the search can draw."""
    from raysl.config import apply_assignment

    base = sweep.base.with_absolute_paths(os.getcwd())
    check_data_conditions(base, data_uri, resolve_pool(base), f"{source}: base: ")
    for key, distribution in sweep.search.items():
        if key.split(".")[0] not in ("data", "evaluation", "batch_size"):
            continue
        for value in distribution.values_to_check():
            run = apply_assignment(sweep.base, {key: value}).with_absolute_paths(os.getcwd())
            check_data_conditions(run, data_uri, resolve_pool(run), f"{source}: search.{key}={value!r}: ")



def check_gpu(run: RunConfig, field: str) -> None:
    """A local run that asks for GPUs has one (on a cluster, Ray places the workers)."""
    if run.resources.gpus_per_worker > 0 and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{field}: gpus_per_worker is {run.resources.gpus_per_worker:g} but this machine has no CUDA GPU")


def validate_init_from(run: RunConfig, where: str, log=print) -> None:
    """init_from loads, and fits the model when the dataset (its channel count) is already prepared."""
    if not run.init_from:
        return
    from raysl.data.prepare import read_manifest
    from raysl.exporting import load_backbone

    try:
        uri = resolve_data(run, log) if run.data.path else None
        if uri:
            read_manifest(uri)
    except UserError:
        uri = None
    if uri:
        check_init_from(run, uri, where)
        return
    try:
        load_backbone(run.init_from)
    except UserError as error:
        raise UserError(f"{where}init_from: {error}") from None
    log(f"note: {where}init_from {run.init_from} loads; it is checked against the model once the data is prepared")


def validate_prepared(run: RunConfig, checksum: bool, log=print) -> None:
    """The datasets a config names by path (or that are already prepared in its cache): their shards' sizes
    (and with --verify-data their checksums). Datasets still to be prepared are checked when they are."""
    from raysl.data.prepare import read_manifest

    uris = []
    for field, path in [("data.path", run.data.path), *((f"data.pool.{index}.path", entry.path) for index, entry in enumerate(run.data.pool))]:
        if not path or (is_remote(path) and not checksum):  # object storage: only when asked (credentials, latency)
            continue
        uri = absolute_path(path)
        try:
            read_manifest(uri)
        except UserError as error:
            log(f"note: {field}: {error} (its shards are checked when a run starts)")
            continue
        uris.append(uri)
    check_shards(uris, checksum=checksum)
    if uris:
        log(f"shards of {len(uris)} prepared dataset(s) present with their recorded sizes"
            + (" and checksums" if checksum else " (add --verify-data to check their checksums too)"))


# ----------------------------------------------------------------------------------------------- packing


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
