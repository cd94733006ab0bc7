"""Training in this process, without Ray: `raysl train --local`, tests and debugging.

The same Trainer and views as the Ray path; batches are made here instead of by Ray Data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch

from raysl.config import RunConfig, ViewsConfig
from raysl.data.pretraining import PretrainingPlan, guarded_batches, in_memory_epoch_images, plan_pretraining
from raysl.ingest.dataset import channels_of, read_manifest
from raysl.training.evaluation import load_eval_sets
from raysl.training.loop import EpochSession, Trainer, epoch_line, run_epochs
from raysl.views.batch import make_views
from raysl.views.encoded import views_of_rows


def in_process_batches(
    images: torch.Tensor, batch_size: int, views: ViewsConfig, generator: torch.Generator
) -> Iterator[list[torch.Tensor]]:
    """One shuffled epoch of view batches (drop_last) from uint8 images (N, H, W, C)."""
    order = torch.randperm(images.shape[0], generator=generator)
    for start in range(0, images.shape[0] - batch_size + 1, batch_size):
        yield make_views(images[order[start : start + batch_size]], views, generator)


def streamed_batches(
    plan: PretrainingPlan, batch_size: int, views: ViewsConfig, generator: torch.Generator, window: int = 8
) -> Iterator[list[torch.Tensor]]:
    """One epoch of view batches (drop_last) of an encoded dataset, read shard by shard (memory: `window`
    batches of encoded rows): shards in a random order, rows shuffled within a window, views cropped from
    each original image as Ray Data's actors do."""
    from raysl.ingest.shards import read_table
    from raysl.io.storage import open_filesystem

    pending: list = []
    manifests = [read_manifest(source.uri) for source in plan.sources]
    shards = [(number, shard) for number, manifest in enumerate(manifests) for shard in manifest["splits"]["train"]["shards"]]
    columns = ["image", "index"] if plan.selective else ["image"]

    def emit(rows: list, final: bool) -> Iterator[list[torch.Tensor]]:
        order = torch.randperm(len(rows), generator=generator).tolist()
        rows[:] = [rows[index] for index in order]
        while len(rows) >= batch_size and (final or len(rows) >= window * batch_size):
            chunk, rows[:] = rows[:batch_size], rows[batch_size:]
            yield views_of_rows(chunk, views, generator, plan.channels)

    for position in torch.randperm(len(shards), generator=generator).tolist():
        number, shard = shards[position]
        uri = plan.sources[number].uri
        filesystem, root = open_filesystem(uri)
        table = read_table(filesystem, f"{root}/{shard}", columns, uri=uri, shard=shard, manifest=manifests[number])
        indices = table.column("index").to_numpy() if "index" in columns else None
        pending.extend(plan.variable_rows(table.column("image").to_pylist(), indices, np.full(table.num_rows, number, np.int64)))
        yield from emit(pending, final=False)
    yield from emit(pending, final=True)


def train_in_process(
    run: RunConfig, data_uri: str, *, pool_uris: list[str] | tuple[str, ...] = (), git_commit: str = "unknown", log=print
) -> str:
    """Train `run` on a prepared dataset (and its pool); checkpoint every epoch under storage_path/name
    (resumes from it); with evaluation.final, write eval.json there after the last epoch."""
    manifest = read_manifest(data_uri)
    plan = plan_pretraining(run, data_uri, pool_uris)
    images = None if plan.variable else torch.from_numpy(in_memory_epoch_images(plan))
    eval_sets = load_eval_sets(run, data_uri, pool_uris)
    trainer = Trainer(
        run, channels_of(manifest), manifest["mean"], manifest["std"],
        steps_per_epoch=plan.epoch_images // run.batch_size, git_commit=git_commit,
    )
    output = Path(os.path.expanduser(run.storage_path)).resolve() / run.name
    output.mkdir(parents=True, exist_ok=True)
    if (output / "state.pt").exists():
        trainer.load(output)
        log(f"resumed from {output} after epoch {trainer.epoch}")
    generator = torch.Generator().manual_seed(run.seed + trainer.epoch)
    run_epochs(trainer, eval_sets, LocalEpochs(run, plan, images, generator, output, log))
    return str(output)


class LocalEpochs(EpochSession):
    """The epoch loop in this process: each epoch's batches made here, the checkpoint and eval.json written to the
    run directory `output`, each epoch's metrics appended to its metrics.jsonl and its line logged."""

    def __init__(self, run: RunConfig, plan: PretrainingPlan, images: torch.Tensor | None, generator: torch.Generator,
                 output: Path, log):
        self.run, self.plan, self.images, self.generator, self.output, self.log = run, plan, images, generator, output, log
        self.eval_checkpoint = str(output)

    def batches(self) -> Iterator[list[torch.Tensor]]:
        run, plan = self.run, self.plan
        if plan.variable:
            return guarded_batches(streamed_batches(plan, run.batch_size, run.views, self.generator), plan)
        return in_process_batches(self.images, run.batch_size, run.views, self.generator)

    def checkpoint_directory(self) -> AbstractContextManager[str]:
        return nullcontext(str(self.output))

    def report(self, trainer: Trainer, metrics: dict, directory: str | None) -> None:
        with open(self.output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        self.log(epoch_line(trainer, metrics))
