"""The Python API, for notebooks and scripts: what `raysl sweep`, `train`, `eval`, `export` and `embed` do, as functions
that return results. The CLI (raysl/cli.py) is a thin layer over these.

    import raysl

    result = raysl.sweep("sweeps/quickstart.yaml", overrides=["max_concurrent_trials=1"], smoke=True)
    result.leaderboard          # pandas DataFrame, best trial first
    result.best_config          # the best trial's RunConfig
    backbone = raysl.load_backbone(result.best_backbone)

Every check runs before Ray starts (a UserError names the file and field). Ray: an already initialised Ray (a
notebook's, a cluster's through RAY_ADDRESS) is used and left running; otherwise an embedded local Ray is
started for the call and shut down after it.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysl.config import RunConfig, SweepConfig, config_data, detect_file_kind, load_run_config, load_sweep_config
from raysl.errors import UserError
from raysl.ingest.resolve import resolve_data, resolve_pool
from raysl.io.storage import absolute_path, is_remote
from raysl.ray_glue.packing import check_packing, local_node
from raysl.ray_glue.session import cluster_nodes, ray_session
from raysl.training.preflight import check_data_conditions, check_gpu, check_shards, check_sweep_data

if TYPE_CHECKING:
    import pandas

ConfigSource = str | os.PathLike | dict[str, Any] | RunConfig | SweepConfig


def git_commit() -> str:
    """The commit of the raysl code that runs (recorded in checkpoints and exports), or "unknown"."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def smoke_machine():
    """The machine a --smoke run is fitted to: this one for an embedded Ray; None on a cluster (RAY_ADDRESS), whose
    nodes the config already describes (a smoke there keeps its resources and only shrinks its sizes)."""
    return None if os.environ.get("RAY_ADDRESS") else local_node()


def _kind_check(source: ConfigSource, wanted: str) -> None:
    if isinstance(source, (RunConfig, SweepConfig)):
        kind = "sweep" if isinstance(source, SweepConfig) else "run"
    else:
        kind = detect_file_kind(config_data(source))
    name = source if isinstance(source, (str, os.PathLike)) else "the config"
    if kind != wanted and wanted == "sweep":
        raise UserError(f"{name}: this is a run config (no base/search/scheduler); run it with `raysl train` / raysl.train")
    if kind != wanted:
        raise UserError(f"{name}: this is a sweep file (it has base/search/scheduler); run it with `raysl sweep` / raysl.sweep")


# ----------------------------------------------------------------------------------------------- sweep


@dataclass
class SweepResult:
    """What a sweep leaves: its experiment directory, the leaderboard, the best trial's config, checkpoint and
    exported backbone, and whether it was interrupted (then `resume_command` continues it)."""

    experiment_dir: str
    data: str
    """The prepared dataset the sweep ran on (its URI)."""
    rows: list[dict[str, Any]] = field(repr=False)
    best_config: RunConfig | None
    best_checkpoint: str | None
    """The best trial's newest checkpoint directory (None: no trial scored)."""
    best_backbone: str | None
    """The export of the best trial's backbone, `best_backbone/` (None: none written, e.g. interrupted)."""
    interrupted: bool = False
    resume_command: str | None = None
    """The command that finishes an interrupted sweep's trials (`raysl sweep FILE ... --resume`)."""

    @property
    def leaderboard(self) -> pandas.DataFrame:
        """One row per trial, best knn_top1 first: the swept values, kNN, epochs, status, loss, throughput, final evaluation."""
        import pandas

        return pandas.DataFrame(self.rows)


def _resume_command(source: ConfigSource, overrides: list[str], smoke: bool) -> str | None:
    if not isinstance(source, (str, os.PathLike)):
        return None
    return shlex.join(["raysl", "sweep", str(source), *(part for item in overrides for part in ("--set", item)),
                       *(["--smoke"] if smoke else []), "--resume"])


def warn_job_storage(storage_path: str, field_name: str, *, strict: bool = False, log=print) -> None:
    """Under `ray job submit` the entrypoint runs in a temporary copy of the working dir, which Ray deletes later:
    results under a relative storage_path (or inside that directory) go with it. Say so before anything starts;
    with `strict`, refuse."""
    job = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not job or is_remote(storage_path):
        return
    try:
        working_dir = (json.loads(job).get("runtime_env") or {}).get("working_dir")
    except ValueError:
        working_dir = None
    inside = not os.path.isabs(os.path.expanduser(storage_path)) or (
        working_dir is not None and Path(absolute_path(storage_path)).is_relative_to(os.getcwd()))
    if not inside:
        return
    where = (f"inside this job's working directory ({os.getcwd()}), a temporary copy Ray deletes after the job: the "
             "results would be lost" if working_dir is not None else
             f"relative to the job's working directory ({os.getcwd()}), on the node that runs the job only")
    message = (f"{field_name} {storage_path!r} is {where}. Use a bucket (s3://..., gs://...) or an "
               f"absolute path on storage every node shares, e.g. --set {field_name}=s3://BUCKET/results")
    if strict:
        raise UserError(f"{message} (--strict-storage)")
    log(f"warning: {message}")


def sweep(config: ConfigSource, overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = False,
          resume: bool = False, verify_data: bool = False, strict_storage: bool = False, log=print) -> SweepResult:
    """Run (or with `resume`, continue) a Ray Tune sweep of a sweep file, dict or SweepConfig, with `--set`-style
    overrides ("key=value", the value YAML). Returns when the sweep ends, is cut by its time budget or is
    interrupted (Ctrl-C: `result.interrupted`, and `result.resume_command`)."""
    import ray

    from raysl.ray_glue.tune import SweepInterrupted, run_sweep

    overrides = list(overrides)
    _kind_check(config, "sweep")
    spec = load_sweep_config(config, overrides, smoke=smoke, machine=smoke_machine() if smoke else None)
    for note in spec.notes:
        log(note)
    check_gpu(spec.base, "base.resources")
    warn_job_storage(spec.storage_path, "storage_path", strict=strict_storage, log=log)
    if not os.environ.get("RAY_ADDRESS") and not ray.is_initialized():
        check_packing(spec, [local_node()], "this machine", log=log)
    data_uri = resolve_data(spec.base, log)
    check_shards([data_uri, *resolve_pool(spec.base.with_absolute_paths(os.getcwd()), log)], checksum=verify_data)
    check_sweep_data(spec, data_uri, str(config) if isinstance(config, (str, os.PathLike)) else "sweep")
    started_here = not ray.is_initialized()
    with ray_session(quiet=True, log=log):
        if os.environ.get("RAY_ADDRESS") or ray.is_initialized() and not started_here:
            try:  # a cluster, or the Ray this notebook started: what it has now
                check_packing(spec, cluster_nodes(), "the Ray cluster now", strict=False, log=log)
            except UserError as error:  # an autoscaling cluster adds nodes when trials ask for them
                log(f"note: {error} (fine if the cluster autoscales; otherwise trials will wait)")
        try:
            outcome = run_sweep(spec, data_uri, git_commit=git_commit(), resume=resume, log=log)
        except SweepInterrupted as error:
            error.resume_command = _resume_command(config, overrides, smoke)
            raise
    best_config = best_checkpoint = None
    if outcome.best_params is not None:
        from raysl.config import apply_assignment
        from raysl.report.experiment import trial_run_dir
        from raysl.training.checkpoint import find_checkpoint

        best_config = apply_assignment(spec.base, outcome.best_params)
        try:
            best_checkpoint = find_checkpoint(trial_run_dir(outcome.path, outcome.rows[0]["trial"]))
        except UserError:
            best_checkpoint = None
    backbone = f"{outcome.path}/best_backbone"
    return SweepResult(
        experiment_dir=outcome.path,
        data=data_uri,
        rows=outcome.rows,
        best_config=best_config,
        best_checkpoint=best_checkpoint,
        best_backbone=backbone if not outcome.interrupted and not is_remote(backbone)
        and os.path.exists(f"{backbone}/model.json") else None,
        interrupted=outcome.interrupted,
        resume_command=_resume_command(config, overrides, smoke) if outcome.interrupted else None,
    )


# ----------------------------------------------------------------------------------------------- train


@dataclass
class TrainResult:
    """What one run leaves: its run directory, its last report's metrics and its newest checkpoint."""

    path: str
    metrics: dict[str, Any]
    checkpoint: str | None


def train(config: ConfigSource, overrides: list[str] | tuple[str, ...] = (), *, smoke: bool = False,
          local: bool = False, verify_data: bool = False, log=print) -> TrainResult:
    """One pretraining run of a run file, dict or RunConfig through Ray Train (with `local`: in this process,
    without Ray, for debugging). A run of the same name and storage_path resumes from its newest checkpoint."""
    from raysl.training.checkpoint import find_checkpoint

    _kind_check(config, "run")
    run = load_run_config(config, list(overrides), smoke=smoke, machine=smoke_machine() if smoke else None)
    run = run.with_absolute_paths(os.getcwd())
    for note in run.notes():
        log(note)
    check_gpu(run, "resources")
    data_uri, pool_uris = resolve_data(run, log), resolve_pool(run, log)
    check_shards([data_uri, *pool_uris], checksum=verify_data)
    where = f"{config}: " if isinstance(config, (str, os.PathLike)) else ""
    check_data_conditions(run, data_uri, pool_uris, where)
    storage = absolute_path(run.storage_path)
    if run.data.corruption.active:
        from raysl.data.pretraining import save_corruption_samples

        save_corruption_samples(data_uri, [run.data.corruption], f"{storage.rstrip('/')}/{run.name}/corruption_samples.png", log)
    if local:
        from raysl.training.local import train_in_process
        from raysl.training.loop import CheckpointError, NonFiniteLossError

        try:
            path = train_in_process(run, data_uri, pool_uris=pool_uris, git_commit=git_commit(), log=log)
        except (NonFiniteLossError, CheckpointError) as error:
            raise UserError(f"training failed: {error}") from None
        return TrainResult(path, _last_metrics(path), _newest_checkpoint(path, find_checkpoint))
    from raysl.ray_glue.run_log import local_log_path, run_log
    from raysl.ray_glue.trainer import run_directory

    run_dir = run_directory(storage, run.name)
    log_path = local_log_path(run_dir, run.name)
    # Ray's own output (its workers', its logging, its retries' tracebacks) goes to the run's log; the screen gets
    # the start, one line per epoch (rank 0's "[name] epoch ..."), and the end or one error naming the log.
    with run_log(log_path, screen_prefixes=[f"[{run.name}] "]) as screen:
        log(f"run '{run.name}': {run.epochs} epoch(s), {run.resources.workers} Train worker(s); Ray's output: {log_path}")
        with ray_session(quiet=False, log=log):
            import ray.train

            from raysl.ray_glue.pipeline import configure_data_context
            from raysl.ray_glue.failure_policy import failure_summary
            from raysl.ray_glue.trainer import build_trainer

            configure_data_context(run)
            trainer = build_trainer(
                run, data_uri, storage_path=storage, name=run.name, git_commit=git_commit(), label=run.name, pool_uris=pool_uris
            )
            try:
                result = trainer.fit()
            except ray.train.TrainingFailedError as error:
                raise UserError(
                    f"training failed: {failure_summary(error)}\n(run directory: {run_dir}; Ray's output: {screen.path})"
                ) from None
    return TrainResult(result.path, dict(result.metrics or {}), result.checkpoint.path if result.checkpoint else None)


def _last_metrics(path: str) -> dict[str, Any]:
    from raysl.io.storage import read_text

    lines = (read_text(f"{path}/metrics.jsonl") or "").strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _newest_checkpoint(path: str, find_checkpoint) -> str | None:
    try:
        return find_checkpoint(path)
    except UserError:
        return None


# ----------------------------------------------------------------------------------------------- embed


EVAL_OVERRIDABLE = ("evaluation", "data.path", "data.cache_dir", "data.source", "data.pool")
"""What `raysl eval --set` may change: where the data is and how it is evaluated, not the checkpoint's model."""


def evaluate(checkpoint: str, overrides: list[str] | tuple[str, ...] = (), *, out: str | None = None, log=print) -> str:
    """kNN top-1/top-5 and a linear probe of a checkpoint (a checkpoint directory, a run or an experiment's best),
    per label set, budget and pool dataset, written to eval.json beside it (or `out`); returns that path."""
    import torch

    from raysl.config import parse_overrides, set_dotted
    from raysl.ingest.dataset import channels_of, read_manifest
    from raysl.io.storage import write_text
    from raysl.methods import build_method
    from raysl.training.checkpoint import find_checkpoint, load_checkpoint, run_config_of_checkpoint
    from raysl.training.evaluation import FeatureOptions, eval_document, full_evaluation, load_eval_sets
    from raysl.training.loop import autocast_dtype
    from raysl.training.preflight import check_evaluation

    directory = find_checkpoint(checkpoint)
    state = load_checkpoint(directory)

    def apply_sets(data: dict) -> None:
        for key, value in parse_overrides(list(overrides)):
            if not key.startswith(EVAL_OVERRIDABLE):
                raise UserError(f"--set {key}: eval can change {', '.join(EVAL_OVERRIDABLE)} (the model is the checkpoint's)")
            set_dotted(data, key, value, source=f"--set {key}")

    run = run_config_of_checkpoint(state, f"{directory}/state.pt", edit=apply_sets,
                                   invalid=f"{directory}: the checkpoint's config with --set is invalid")
    run = run.with_absolute_paths(os.getcwd())
    data_uri, pool_uris = resolve_data(run, log), resolve_pool(run, log)
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
    log(f"evaluating {directory} (epoch {state.get('epoch')}, {run.method.name}) on {device}")
    rows = full_evaluation(method.backbone, load_eval_sets(run, data_uri, pool_uris), run.evaluation, options, log=log)
    target = out or f"{directory}/eval.json"
    write_text(target, eval_document(run, int(state.get("epoch", 0)), rows, directory))
    return target


def embed(source: str, data: str, out: str, **options) -> dict[str, Any]:
    """Embed a prepared dataset with an export's or a checkpoint's backbone through Ray Data, to Parquet at
    `out` (raysl.ray_glue.embed.embed: split, dtype, batch_size, actors, use_gpu); returns embed.json's summary."""
    from raysl.ray_glue.embed import embed as run_embed

    return run_embed(source, data, out, **options)
