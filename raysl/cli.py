"""`raysl` command line: prepare, validate, train, sweep, eval, report, submit. Thin: parse, call, print.

Every user error (a bad file, a bad field, missing data) is printed as one clear message naming the
file and field, with a non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from raysl.config import (
    KINDS, RunConfig, detect_file_kind, load_run_config, load_sweep_config, read_yaml,
)
from raysl.errors import UserError


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _log(message: str) -> None:
    print(message, flush=True)


def _log_notes(notes: list[str]) -> None:
    for note in notes:
        _log(note)


def _resolve(path: str | None, kind: str | None, source: str | None, cache_dir: str, image_size: int | None, field: str) -> str:
    from raysl.data.prepare import ensure_prepared, read_manifest

    if path:
        path = path if "://" in path else os.path.abspath(os.path.expanduser(path))  # as Ray Data will see it
        try:
            read_manifest(path)
        except UserError as error:
            raise UserError(f"{field}: {error}") from None
        return path
    try:
        return ensure_prepared(kind, source, os.path.abspath(os.path.expanduser(cache_dir)), image_size=image_size, log=_log)
    except UserError as error:
        raise UserError(f"{field.rsplit('.', 1)[0]}.kind {kind}: {error}") from None


def resolve_data(run: RunConfig) -> str:
    """The prepared dataset's URI: data.path, or a cached copy of data.kind prepared on first use."""
    return _resolve(run.data.path, run.data.kind, run.data.source, run.data.cache_dir, run.data.image_size, "data.path")


def resolve_pool(run: RunConfig) -> list[str]:
    """The URIs of data.pool's datasets (prepared into data.cache_dir on first use), in order."""
    return [
        _resolve(entry.path, entry.kind, entry.source, run.data.cache_dir, None, f"data.pool.{index}.path")
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
    """init_from's weights fit the run's backbone, before Ray starts (a UserError names the keys)."""
    if not run.init_from:
        return
    from raysl.data.prepare import read_manifest
    from raysl.data.rows import channels_of
    from raysl.exporting import initialise_from
    from raysl.methods import build_method

    try:
        initialise_from(build_method(run, channels_of(read_manifest(data_uri))), run.init_from)
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


def _start_ray(*, quiet: bool) -> None:
    """Connect to RAY_ADDRESS's cluster (also set under `ray job submit`), else start an embedded local
    Ray with the dashboard on (it runs the cleaner that frees a stopped trial's placement group)."""
    import ray

    if ray.is_initialized():
        return
    options = dict(logging_level=logging.WARNING, log_to_driver=not quiet)
    if os.environ.get("RAY_ADDRESS"):
        _log(f"connecting to the Ray cluster at {os.environ['RAY_ADDRESS']}")
        ray.init(**options)
    else:
        _log("starting an embedded local Ray (set RAY_ADDRESS to use a cluster)")
        ray.init(include_dashboard=True, **options)


def _stop_ray() -> None:
    """Shut Ray down so its late log lines come before ours, and the path stays the last line."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _gpu_check(run: RunConfig, field: str) -> None:
    if run.resources.gpus_per_worker > 0 and not os.environ.get("RAY_ADDRESS"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"{field}: gpus_per_worker is {run.resources.gpus_per_worker:g} but this machine has no CUDA GPU")


def command_prepare(args: argparse.Namespace) -> None:
    from raysl.data.prepare import prepare

    prepare(
        args.kind, args.source, args.out, image_size=args.image_size, test_fraction=args.test_fraction,
        seed=args.seed, strict=args.strict, download=args.download, workers=args.workers,
        progress=not args.no_progress, unlabeled=args.unlabeled, mode=args.mode, max_side=args.max_side,
        quality=args.quality, classes=args.classes, image_column=args.image_column, label_column=args.label_column,
    )


def command_validate(args: argparse.Namespace) -> None:
    kind = detect_file_kind(read_yaml(args.config))
    if kind == "sweep":
        sweep = load_sweep_config(args.config, args.set, smoke=args.smoke)
        _log_notes(sweep.notes)
        run = sweep.base
        what = f"valid sweep config ({sweep.trial_count} trials, {len(sweep.search)} searched keys)"
    else:
        run = load_run_config(args.config, args.set, smoke=args.smoke)
        _log_notes(run.notes())
        what = "valid run config"
    _validate_prepared(run.with_absolute_paths(os.getcwd()), checksum=args.verify_data)
    _validate_init_from(run.with_absolute_paths(os.getcwd()), f"{args.config}: {'base.' if kind == 'sweep' else ''}")
    _log(f"{args.config}: {what}")


def _validate_init_from(run: RunConfig, where: str) -> None:
    """init_from loads, and fits the model when the dataset (its channel count) is already prepared."""
    if not run.init_from:
        return
    from raysl.data.prepare import read_manifest
    from raysl.exporting import load_backbone

    try:
        uri = resolve_data(run) if run.data.path else None
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
    _log(f"note: {where}init_from {run.init_from} loads; it is checked against the model once the data is prepared")


def _validate_prepared(run: RunConfig, checksum: bool) -> None:
    """The datasets a config names by path (or that are already prepared in its cache): their shards' sizes
    (and with --verify-data their checksums). Datasets still to be prepared are checked when they are."""
    from raysl.data.prepare import read_manifest

    uris = []
    for field, path in [("data.path", run.data.path), *((f"data.pool.{index}.path", entry.path) for index, entry in enumerate(run.data.pool))]:
        if not path or ("://" in path and not checksum):  # object storage: only when asked (credentials, latency)
            continue
        uri = path if "://" in path else os.path.abspath(os.path.expanduser(path))
        try:
            read_manifest(uri)
        except UserError as error:
            _log(f"note: {field}: {error} (its shards are checked when a run starts)")
            continue
        uris.append(uri)
    check_shards(uris, checksum=checksum)
    if uris:
        _log(f"shards of {len(uris)} prepared dataset(s) present with their recorded sizes"
             + (" and checksums" if checksum else " (add --verify-data to check their checksums too)"))


def command_train(args: argparse.Namespace) -> None:
    if detect_file_kind(read_yaml(args.config)) == "sweep":
        raise UserError(f"{args.config}: this is a sweep file (it has base/search/scheduler); run it with `raysl sweep`")
    run = load_run_config(args.config, args.set, smoke=args.smoke).with_absolute_paths(os.getcwd())
    _log_notes(run.notes())
    _gpu_check(run, "resources")
    data_uri, pool_uris = resolve_data(run), resolve_pool(run)
    check_shards([data_uri, *pool_uris], checksum=args.verify_data)
    check_data_conditions(run, data_uri, pool_uris, f"{args.config}: ")
    if run.data.corruption.active:
        from raysl.data.pretraining import save_corruption_samples
        from raysl.ray_glue.tune import absolute_path

        run_dir = f"{absolute_path(run.storage_path).rstrip('/')}/{run.name}"
        save_corruption_samples(data_uri, [run.data.corruption], f"{run_dir}/corruption_samples.png", _log)
    if args.local:
        from raysl.training.local import train_in_process
        from raysl.training.loop import CheckpointError, NonFiniteLossError

        try:
            path = train_in_process(run, data_uri, pool_uris=pool_uris, git_commit=_git_commit(), log=_log)
        except (NonFiniteLossError, CheckpointError) as error:
            raise UserError(f"training failed: {error}") from None
        _log(path)
        return
    _start_ray(quiet=False)
    import ray.train

    from raysl.ray_glue.train import build_trainer, configure_data_context, failure_summary, run_directory
    from raysl.ray_glue.tune import absolute_path

    configure_data_context(run)
    storage = absolute_path(run.storage_path)
    trainer = build_trainer(
        run, data_uri, storage_path=storage, name=run.name, git_commit=_git_commit(), label=run.name, pool_uris=pool_uris
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as error:
        raise UserError(
            f"training failed: {failure_summary(error)}\n(run directory: {run_directory(storage, run.name)})"
        ) from None
    finally:
        _stop_ray()
    metrics = result.metrics or {}
    resumed = metrics.get("resumed_at_epoch", 0)
    _log(f"done: {metrics.get('epoch', '?')} epochs, knn_top1 {metrics.get('knn_top1', float('nan')):.4f}"
         + (f" (the last attempt resumed from the checkpoint of epoch {resumed})" if resumed else ""))
    _log(result.path)


def command_sweep(args: argparse.Namespace) -> None:
    if detect_file_kind(read_yaml(args.config)) == "run":
        raise UserError(f"{args.config}: this is a run config (no base/search/scheduler); run it with `raysl train`")
    sweep = load_sweep_config(args.config, args.set, smoke=args.smoke)
    _log_notes(sweep.notes)
    _gpu_check(sweep.base, "base.resources")
    from raysl.ray_glue.tune import check_cpu_budget, run_sweep

    if not os.environ.get("RAY_ADDRESS"):
        check_cpu_budget(sweep, float(os.cpu_count() or 1), "this machine")
    data_uri = resolve_data(sweep.base)
    check_shards([data_uri, *resolve_pool(sweep.base.with_absolute_paths(os.getcwd()))], checksum=args.verify_data)
    check_sweep_data(sweep, data_uri, args.config)
    _start_ray(quiet=True)
    if os.environ.get("RAY_ADDRESS"):
        import ray

        try:
            check_cpu_budget(sweep, ray.cluster_resources().get("CPU", 0.0), "the cluster now")
        except UserError as error:  # an autoscaling cluster adds nodes when trials ask for them
            _log(f"note: {error} (fine if the cluster autoscales; otherwise trials will wait)")
    try:
        path = run_sweep(sweep, data_uri, git_commit=_git_commit(), resume=args.resume, log=_log)
    finally:
        _stop_ray()
    _log(path)  # the last line: the experiment directory


# Never uploaded with a job's working dir (also listed in .rayignore): data and results travel through
# shared storage, not inside the job package.
SUBMIT_EXCLUDES = [".git", ".venv", ".gpu", ".whl", "results", "data", "*.parquet", "*.pt", "__pycache__", ".pytest_cache"]


def submit_command(args: argparse.Namespace) -> list[str]:
    """The `ray job submit` command line that runs this sweep file on the cluster at args.address."""
    import json

    entrypoint = ["raysl", "sweep", args.config]
    for assignment in args.set or []:
        entrypoint += ["--set", assignment]
    entrypoint += ["--smoke"] if args.smoke else []
    entrypoint += ["--resume"] if args.resume else []
    command = ["ray", "job", "submit", "--address", args.address, "--working-dir", ".",
               "--runtime-env-json", json.dumps({"excludes": SUBMIT_EXCLUDES})]
    command += ["--no-wait"] if args.no_wait else []
    return command + ["--", *entrypoint]


def command_submit(args: argparse.Namespace) -> None:
    """Validate the sweep file here, then hand it to `ray job submit` (a bad file never reaches the cluster)."""
    if detect_file_kind(read_yaml(args.config)) == "run":
        raise UserError(f"{args.config}: this is a run config; `raysl submit` takes a sweep file")
    sweep = load_sweep_config(args.config, args.set, smoke=args.smoke)
    _log_notes(sweep.notes)
    config = Path(args.config).resolve()
    try:
        args.config = str(config.relative_to(Path.cwd()))
    except ValueError:
        raise UserError(f"{args.config}: the sweep file must be inside the working dir that is uploaded ({Path.cwd()})") from None
    local = [field for field, value in (("base.data.path", sweep.base.data.path), ("storage_path", sweep.storage_path))
             if value and "://" not in value]
    if local:
        _log(f"note: {', '.join(local)} is a local path; on a multi-node cluster every node must see it (use s3:// or gs://)")
    address = args.address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("--address: give the cluster's job server (e.g. http://127.0.0.1:8265 through `ray dashboard cluster/aws.yaml`) or set RAY_ADDRESS")
    args.address = address
    command = submit_command(args)
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")  # Ray 2.60 clusters require the token (~/.ray/auth_token or RAY_AUTH_TOKEN)
    _log(f"{args.config}: valid sweep ({sweep.trial_count} trials); submitting: {' '.join(command)}")
    ray_cli = Path(sys.executable).with_name("ray")
    if ray_cli.exists():
        command[0] = str(ray_cli)
    code = subprocess.run(command, env=env).returncode
    if code:
        raise UserError(f"the job did not succeed (ray job submit exited {code}); see `ray job logs` for its output")


EVAL_OVERRIDABLE = ("evaluation", "data.path", "data.cache_dir", "data.source", "data.pool")


def command_eval(args: argparse.Namespace) -> None:
    """kNN top-1/top-5 and a linear probe of a checkpoint, per label set, budget and pool dataset -> eval.json."""
    import torch
    from pydantic import ValidationError

    from raysl.config import _validation_message, legacy_stem, parse_overrides, set_dotted
    from raysl.data.prepare import read_manifest
    from raysl.data.rows import channels_of
    from raysl.methods import build_method
    from raysl.storage import write_text
    from raysl.training.evaluation import (
        FeatureOptions, eval_document, find_checkpoint, full_evaluation, load_checkpoint, load_eval_sets,
    )
    from raysl.training.loop import autocast_dtype

    directory = find_checkpoint(args.checkpoint)
    state = load_checkpoint(directory)
    data = state.get("config")
    if not isinstance(data, dict) or "method" not in state:
        raise UserError(f"{directory}/state.pt is not a raysl checkpoint (no config or method weights)")
    legacy_stem(data)
    for key, value in parse_overrides(args.set):
        if not key.startswith(EVAL_OVERRIDABLE):
            raise UserError(f"--set {key}: eval can change {', '.join(EVAL_OVERRIDABLE)} (the model is the checkpoint's)")
        set_dotted(data, key, value, source=f"--set {key}")
    try:
        run = RunConfig.model_validate(data).with_absolute_paths(os.getcwd())
    except ValidationError as error:
        raise UserError(f"{directory}: the checkpoint's config with --set is invalid\n{_validation_message(error)}") from None
    data_uri, pool_uris = resolve_data(run), resolve_pool(run)
    check_evaluation(run, data_uri, pool_uris)
    manifest = read_manifest(data_uri)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    method = build_method(run, channels_of(manifest))
    method.load_state_dict(state["method"])
    method.to(device)
    options = FeatureOptions(
        torch.tensor(manifest["mean"], device=device), torch.tensor(manifest["std"], device=device),
        run.evaluation.feature_batch(device.type), device, autocast_dtype(run, device),
        feature_dtype=getattr(torch, run.evaluation.feature_dtype),
    )
    _log(f"evaluating {directory} (epoch {state.get('epoch')}, {run.method.name}) on {device}")
    rows = full_evaluation(method.backbone, load_eval_sets(run, data_uri, pool_uris), run.evaluation, options, log=_log)
    target = args.out or f"{directory}/eval.json"
    write_text(target, eval_document(run, int(state.get("epoch", 0)), rows, directory))
    _log(target)


def command_report(args: argparse.Namespace) -> None:
    from raysl.report import build_report

    build_report(args.experiment.rstrip("/"), log=_log)


def command_export(args: argparse.Namespace) -> None:
    from raysl.exporting import export_backbone

    export_backbone(args.checkpoint, args.out, tuple(dict.fromkeys(["state_dict", *(args.format or [])])), log=_log)
    _log(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="turn a raw dataset into Parquet shards + manifest")
    # parquet and webdataset are prepare-only sources (converted into raysl's encoded layout; run configs
    # cannot name them): the same names as raysl.data.prepare.KINDS, without importing pyarrow here
    prepare.add_argument("kind", choices=(*KINDS, "parquet", "webdataset"))
    prepare.add_argument("source", nargs="?", help="raw files' directory (fashion-mnist: Debian's by default); "
                         "parquet/webdataset: a directory or glob of .parquet / .tar files")
    prepare.add_argument("--out", required=True, help="output directory or URI (s3://, gs://)")
    prepare.add_argument("--mode", choices=("auto", "encoded", "pixels"), default="auto",
                         help="storage: encoded image files, or fixed-shape pixels (auto: pixels for idx/CIFAR, "
                         "--image-size, or folders of one size <= 64 px; else encoded)")
    prepare.add_argument("--image-size", type=int, help="resize every image to SIZE x SIZE (pixels)")
    prepare.add_argument("--max-side", type=int, default=512,
                         help="encoded: shrink images whose long side is larger (default 512; 0: no limit)")
    prepare.add_argument("--quality", type=int, default=90, help="encoded: JPEG quality of re-encoded images (default 90)")
    prepare.add_argument("--classes", metavar="FILE", help="image folders: keep only the class folders listed "
                         "in FILE (one a line, # comments), or in a shipped list: imagenet100 (the CMC ImageNet-100 "
                         "subset; an existing file of that name wins); every listed class needs train images")
    prepare.add_argument("--image-column", default="image", help="parquet: the column of encoded image bytes")
    prepare.add_argument("--label-column", default="label", help="parquet: the label column (int or string)")
    prepare.add_argument("--test-fraction", type=float, default=0.1,
                         help="the share of each class held out when the source has no val/validation/test split")
    prepare.add_argument("--seed", type=int, default=0)
    prepare.add_argument("--strict", action="store_true", help="any undecodable image is an error")
    prepare.add_argument("--download", action="store_true", help="fetch the raw files first (needs internet)")
    prepare.add_argument("--unlabeled", action="store_true", help="image folder without class subfolders")
    prepare.add_argument("--workers", type=int, help="parallel decoders (default: all cores)")
    prepare.add_argument("--no-progress", action="store_true")
    prepare.set_defaults(handler=command_prepare)

    for name, handler, help_text in (
        ("validate", command_validate, "check a run or sweep file without starting Ray"),
        ("train", command_train, "run one pretraining run (Ray Train)"),
        ("sweep", command_sweep, "run a Ray Tune sweep (ASHA on kNN top-1)"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config", help="YAML file")
        command.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (value is YAML); repeatable")
        command.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch (two trials for a sweep)")
        command.add_argument("--verify-data", action="store_true",
                             help="also check every shard's sha256 against the manifest (reads every byte; sizes are always checked)")
        command.set_defaults(handler=handler)
        if name == "sweep":
            command.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this file")
        if name == "train":
            command.add_argument("--local", action="store_true", help="train in this process, without Ray (debugging)")
    evaluate = commands.add_parser("eval", help="kNN top-1/5 and a linear probe of a checkpoint -> eval.json beside it")
    evaluate.add_argument("checkpoint", help="checkpoint directory, its state.pt, or a run directory (newest checkpoint); local or URI")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override evaluation.* (label_sets, budgets, probe...) or where the data is; repeatable")
    evaluate.add_argument("--out", help="where to write the JSON (default: eval.json in the checkpoint directory)")
    evaluate.set_defaults(handler=command_eval)
    export = commands.add_parser("export", help="a checkpoint's backbone alone (torchvision's state_dict names) + model.json")
    export.add_argument("checkpoint", help="checkpoint directory, its state.pt, or a run directory (newest checkpoint)")
    export.add_argument("--out", required=True, help="the export directory to write")
    export.add_argument("--format", action="append", choices=["torchscript"],
                        help="also a TorchScript module, checked against the original on a batch (repeatable)")
    export.set_defaults(handler=command_export)
    report = commands.add_parser("report", help="leaderboard (Markdown + CSV) and PNG plots of a sweep's experiment directory")
    report.add_argument("experiment", help="the experiment directory (local or URI), e.g. results/quickstart")
    report.set_defaults(handler=command_report)
    submit = commands.add_parser("submit", help="validate a sweep file here, then run it on a cluster with `ray job submit`")
    submit.add_argument("config", help="sweep YAML file inside the current directory (it is uploaded as the working dir)")
    submit.add_argument("--address", help="the cluster's job server URL (default: RAY_ADDRESS)")
    submit.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field (value is YAML); repeatable")
    submit.add_argument("--smoke", action="store_true", help="submit the smoke version of the sweep")
    submit.add_argument("--resume", action="store_true", help="resume the interrupted sweep of this file on the cluster")
    submit.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
    submit.set_defaults(handler=command_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
