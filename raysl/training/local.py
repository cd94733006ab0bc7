"""Training in this process, without Ray: `raysl train --local`, tests and debugging.

The same Trainer and views as the Ray path; batches are made here instead of by Ray Data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch

from raysl.config import RunConfig, ViewsConfig
from raysl.data.prepare import read_manifest
from raysl.data.pretraining import in_memory_epoch_images, plan_pretraining
from raysl.data.views import make_views
from raysl.training.evaluation import eval_document, flat_metrics, load_eval_sets
from raysl.training.loop import Trainer


def in_process_batches(
    images: torch.Tensor, batch_size: int, views: ViewsConfig, generator: torch.Generator
) -> Iterator[list[torch.Tensor]]:
    """One shuffled epoch of view batches (drop_last) from uint8 images (N, H, W, C)."""
    order = torch.randperm(images.shape[0], generator=generator)
    for start in range(0, images.shape[0] - batch_size + 1, batch_size):
        yield make_views(images[order[start : start + batch_size]], views, generator)


def train_in_process(
    run: RunConfig, data_uri: str, *, pool_uris: list[str] | tuple[str, ...] = (), git_commit: str = "unknown", log=print
) -> str:
    """Train `run` on a prepared dataset (and its pool); checkpoint every epoch under storage_path/name
    (resumes from it); with evaluation.final, write eval.json there after the last epoch."""
    manifest = read_manifest(data_uri)
    images = torch.from_numpy(in_memory_epoch_images(plan_pretraining(run, data_uri, pool_uris)))
    eval_sets = load_eval_sets(run, data_uri, pool_uris)
    trainer = Trainer(
        run, manifest["image_shape"][2], manifest["mean"], manifest["std"],
        steps_per_epoch=images.shape[0] // run.batch_size, git_commit=git_commit,
    )
    output = Path(os.path.expanduser(run.storage_path)).resolve() / run.name
    output.mkdir(parents=True, exist_ok=True)
    if (output / "state.pt").exists():
        trainer.load(output)
        log(f"resumed from {output} after epoch {trainer.epoch}")
    generator = torch.Generator().manual_seed(run.seed + trainer.epoch)
    while trainer.epoch < run.epochs:
        metrics = trainer.train_epoch(in_process_batches(images, run.batch_size, run.views, generator))
        metrics.update(trainer.evaluate(eval_sets))
        trainer.save(output)
        if run.evaluation.final and trainer.epoch == run.epochs:
            rows = trainer.full_evaluation(eval_sets, log=log)
            (output / "eval.json").write_text(eval_document(run, trainer.epoch, rows, str(output)))
            metrics.update(flat_metrics(rows))
        with open(output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        log(f"epoch {trainer.epoch}/{run.epochs} loss {metrics['loss']:.4f} knn_top1 {metrics['knn_top1']:.4f} "
            f"images/s {metrics['images_per_s']:.0f}")
    return str(output)
