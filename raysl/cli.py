"""`raysl` command line: prepare, validate, train, sweep, eval, report, export, embed, submit. Thin: parse, call
the Python API (raysl.api) or the module that does the work, print.

Every user error (a bad file, a bad field, missing data) is printed as one clear message naming the
file and field, with a non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from raysl.config import KINDS, detect_file_kind, load_run_config, load_sweep_config, read_yaml
from raysl.errors import UserError
from raysl.training.preflight import validate_init_from, validate_prepared

INTERRUPTED = 130  # the exit status of a sweep stopped by Ctrl-C (SIGINT), as a shell reports a killed command


def _log(message: str) -> None:
    print(message, flush=True)


def _log_notes(notes: list[str]) -> None:
    for note in notes:
        _log(note)


def command_prepare(args: argparse.Namespace) -> None:
    from raysl.ingest.prepare import prepare

    prepare(
        args.kind, args.source, args.out, image_size=args.image_size, test_fraction=args.test_fraction,
        seed=args.seed, strict=args.strict, download=args.download, workers=args.workers,
        progress=not args.no_progress, unlabeled=args.unlabeled, mode=args.mode, max_side=args.max_side,
        quality=args.quality, classes=args.classes, image_column=args.image_column, label_column=args.label_column,
    )


def command_validate(args: argparse.Namespace) -> None:
    kind = detect_file_kind(read_yaml(args.config))
    if kind == "sweep":
        sweep = load_sweep_config(args.config, args.set, smoke=args.smoke, machine=_smoke_machine(args))
        _log_notes(sweep.notes)
        run = sweep.base
        what = f"valid sweep config ({sweep.trial_count} trials, {len(sweep.search)} searched keys)"
        _validate_packing(sweep, args.cluster)
    else:
        run = load_run_config(args.config, args.set, smoke=args.smoke, machine=_smoke_machine(args))
        _log_notes(run.notes())
        what = "valid run config"
    validate_prepared(run.with_absolute_paths(os.getcwd()), checksum=args.verify_data, log=_log)
    validate_init_from(run.with_absolute_paths(os.getcwd()), f"{args.config}: {'base.' if kind == 'sweep' else ''}", log=_log)
    _log(f"{args.config}: {what}")


def _smoke_machine(args: argparse.Namespace):
    """validate --smoke checks what `raysl sweep --smoke` would run: fitted to this machine, unless --cluster."""
    from raysl.api import smoke_machine

    return smoke_machine() if args.smoke and not getattr(args, "cluster", None) else None


def _validate_packing(sweep, cluster: str | None) -> None:
    """How many trials run at once on the cluster file's node types (--cluster), else on this machine."""
    from raysl.ray_glue.packing import check_packing, cluster_file_nodes, local_node

    if cluster:
        check_packing(sweep, cluster_file_nodes(cluster), cluster, strict=False, log=_log)
        return
    try:
        check_packing(sweep, [local_node()], "this machine", log=_log)
    except UserError as error:
        _log(f"note: {error} (for a cluster: raysl validate ... --cluster cluster/aws.yaml)")


def command_train(args: argparse.Namespace) -> None:
    from raysl.api import train

    result = train(args.config, args.set or [], smoke=args.smoke, local=args.local, verify_data=args.verify_data, log=_log)
    if not args.local:
        metrics = result.metrics
        resumed = metrics.get("resumed_at_epoch", 0)
        _log(f"done: {metrics.get('epoch', '?')} epochs, knn_top1 {metrics.get('knn_top1', float('nan')):.4f}"
             + (f" (the last attempt resumed from the checkpoint of epoch {resumed})" if resumed else ""))
    _log(result.path)  # the last line: the run directory


def command_sweep(args: argparse.Namespace) -> int:
    from raysl.api import sweep

    result = sweep(args.config, args.set or [], smoke=args.smoke, resume=args.resume, verify_data=args.verify_data,
                   strict_storage=args.strict_storage, log=_log)
    if result.interrupted:
        _log(f"\ninterrupted: the trials still running were stopped; their checkpoints are kept in {result.experiment_dir}")
        _log(f"finish the same trials with:\n  {result.resume_command}")
        return INTERRUPTED
    _log(result.experiment_dir)  # the last line: the experiment directory
    return 0


# Never uploaded with a job's working dir (also listed in .rayignore): data and results travel through
# shared storage, not inside the job package.
# Anchored at the working dir's root ("/data", not "data"): an unanchored "data" also matched raysl/data/.
SUBMIT_EXCLUDES = ["/.git", "/.venv", "/.gpu", "/.whl", "/results", "/data", "*.parquet", "*.pt", "__pycache__", ".pytest_cache"]


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


def command_eval(args: argparse.Namespace) -> None:
    """kNN top-1/top-5 and a linear probe of a checkpoint, per label set, budget and pool dataset -> eval.json."""
    from raysl.api import evaluate

    _log(evaluate(args.checkpoint, args.set or (), out=args.out, log=_log))


def command_report(args: argparse.Namespace) -> None:
    from raysl.report.build import build_report
    from raysl.report.compare import build_comparison

    if len(args.experiment) == 1 and not args.out:
        build_report(args.experiment[0].rstrip("/"), log=_log)
        return
    if not args.out:
        raise UserError("--out: several experiments are compared into one directory; give it (e.g. --out results/compare)")
    build_comparison([path.rstrip("/") for path in args.experiment], args.out, log=_log)


def command_export(args: argparse.Namespace) -> None:
    from raysl.outputs.export import export_backbone

    export_backbone(args.checkpoint, args.out, tuple(dict.fromkeys(["state_dict", *(args.format or [])])), log=_log)
    _log(args.out)


def command_embed(args: argparse.Namespace) -> None:
    from raysl.api import embed

    embed(args.source, args.data, args.out, split=args.split, dtype=args.dtype, batch_size=args.batch_size,
          actors=args.actors, use_gpu=args.gpu, log=_log)
    _log(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="raysl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="turn a raw dataset into Parquet shards + manifest")
    # parquet and webdataset are prepare-only sources (converted into raysl's encoded layout; run configs
    # cannot name them): the same names as raysl.ingest.dataset.KINDS, without importing pyarrow here
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
        command.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch (two trials for a sweep), resources and crops fitted to this machine")
        command.add_argument("--verify-data", action="store_true",
                             help="also check every shard's sha256 against the manifest (reads every byte; sizes are always checked)")
        command.set_defaults(handler=handler)
        if name == "sweep":
            command.add_argument("--resume", action="store_true", help="continue the interrupted sweep of this file")
            command.add_argument("--strict-storage", action="store_true", help="under `ray job submit`, refuse a "
                                 "storage_path inside the job's temporary working dir (default: a warning)")
        if name == "train":
            command.add_argument("--local", action="store_true", help="train in this process, without Ray (debugging)")
        if name == "validate":
            command.add_argument("--cluster", metavar="FILE", help="a sweep: how many trials run at once on this `ray up` "
                                 "cluster file's node types (default: on this machine)")
    evaluate = commands.add_parser("eval", help="kNN top-1/5 and a linear probe of a checkpoint -> eval.json beside it")
    evaluate.add_argument("checkpoint", help="checkpoint directory, its state.pt, or a run directory (newest checkpoint); local or URI")
    evaluate.add_argument("--set", action="append", metavar="KEY=VALUE",
                          help="override evaluation.* (label_sets, budgets, probe...) or where the data is; repeatable")
    evaluate.add_argument("--out", help="where to write the JSON (default: eval.json in the checkpoint directory)")
    evaluate.set_defaults(handler=command_eval)
    export = commands.add_parser("export", help="a checkpoint's backbone alone (torchvision's state_dict names) + model.json")
    export.add_argument("checkpoint", help="checkpoint directory, its state.pt, or a run directory (newest checkpoint)")
    export.add_argument("--out", required=True, help="the export directory to write")
    export.add_argument("--format", action="append", choices=["torchscript", "onnx"],
                        help="also a TorchScript module or an ONNX file (pip install 'raysl[onnx]'), each checked "
                        "against the original on a batch (repeatable)")
    export.set_defaults(handler=command_export)
    embed = commands.add_parser("embed", help="embed a prepared dataset with a backbone (Ray Data batch inference) -> Parquet")
    embed.add_argument("source", help="a `raysl export` directory, or a checkpoint / run / experiment directory")
    embed.add_argument("data", help="a prepared dataset (raysl prepare's output: local path or URI)")
    embed.add_argument("--out", required=True, help="the directory or URI (s3://, gs://) to write the Parquet files to")
    embed.add_argument("--split", default="all", help="all (default), a split name (train, test), or names separated by commas")
    embed.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="the embeddings' type (default float16)")
    embed.add_argument("--batch-size", type=int, default=256, help="images per inference batch (default 256)")
    embed.add_argument("--actors", type=int, help="backbone actors (default: one per GPU with --gpu, else half the CPUs)")
    embed.add_argument("--gpu", action="store_true", help="one GPU per backbone actor")
    embed.set_defaults(handler=command_embed)
    report = commands.add_parser("report", help="leaderboard (Markdown + CSV) and PNG plots of a sweep's experiment directory")
    report.add_argument("experiment", nargs="+", help="the experiment directory (local or URI), e.g. results/quickstart; "
                        "several: one table and one kNN-per-epoch plot of them all (needs --out)")
    report.add_argument("--out", help="where a comparison of several experiments goes (comparison.md / .csv, plots/)")
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
        return args.handler(args) or 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt as error:
        print("interrupted", file=sys.stderr)
        if command := getattr(error, "resume_command", None):  # a sweep: it continues with --resume
            print(f"finish the same trials with:\n  {command}", flush=True)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
