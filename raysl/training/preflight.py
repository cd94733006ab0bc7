"""A run's checks before Ray starts or any resource is requested: the prepared shards are there (and intact
with --verify-data), the data conditions fit the data, the evaluation fits its classes, init_from fits the
backbone, a local run that asks for a GPU has one. A UserError names the field (and the drawn value of a sweep).

The CLI's validate / train / sweep / eval and the Python API call these; no Ray here.
"""

from __future__ import annotations

import os

from raysl.config import RunConfig
from raysl.errors import UserError
from raysl.ingest.resolve import resolve_data, resolve_pool
from raysl.io.storage import absolute_path, is_remote


def check_evaluation(run: RunConfig, data_uri: str, pool_uris: list[str], where: str = "") -> None:
    """What evaluation needs, before Ray starts: distinct datasets, label sets that fit the main dataset's
    classes with distinct names, and labels in every pool dataset (each is evaluated with kNN)."""
    from raysl.ingest.dataset import read_manifest
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
    from raysl.ingest.dataset import read_manifest
    from raysl.ingest.shards import require_intact

    for uri in dict.fromkeys(uris):
        require_intact(uri, read_manifest(uri), checksum=checksum)


def check_encoded(run: RunConfig, data_uri: str, pool_uris: list[str], where: str = "") -> None:
    """What an encoded (variable-size) main dataset allows: with views.where: trainer the Train worker decodes
    the stored files itself, so rows must reach it as files (no corruption, no pool)."""
    from raysl.ingest.dataset import is_encoded, read_manifest

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

    from raysl.ingest.dataset import channels_of, read_manifest
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
    from raysl.ingest.dataset import read_manifest
    from raysl.training.checkpoint import load_backbone

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
    from raysl.ingest.dataset import read_manifest

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
