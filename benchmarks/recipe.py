"""Train one SimCLR recipe in-process (no Ray, one thread) on Fashion-MNIST and print kNN top-1 per epoch.

How the quickstart recipe was chosen: each candidate for a few epochs, two candidates at a time on
the 2-core machine (one core each, like two quickstart trials), compared epoch by epoch.

    .venv/bin/python benchmarks/recipe.py DATA_DIR '{"model": {"pool_size": 3}, "epochs": 4}'

DATA_DIR is a prepared dataset (`raysl prepare fashion-mnist --out DATA_DIR`); the JSON is a run
config (see raysl/config.py), every field optional.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from raysl.config import RunConfig
from raysl.data.prepare import load_split, read_manifest
from raysl.training.local import in_process_batches
from raysl.training.loop import EvalData, Trainer


def main() -> None:
    data_uri, overrides = sys.argv[1], json.loads(sys.argv[2] if len(sys.argv) > 2 else "{}")
    torch.set_num_threads(1)
    run = RunConfig.model_validate(overrides)
    manifest = read_manifest(data_uri)
    train_images, train_labels = (torch.from_numpy(a) for a in load_split(data_uri, "train"))
    test_images, test_labels = (torch.from_numpy(a) for a in load_split(data_uri, "test"))
    eval_data = EvalData(train_images, train_labels, test_images, test_labels, len(manifest["class_names"]))
    trainer = Trainer(run, manifest["image_shape"][2], manifest["mean"], manifest["std"],
                      steps_per_epoch=train_images.shape[0] // run.batch_size)
    generator = torch.Generator().manual_seed(run.seed)
    started = time.perf_counter()
    for _ in range(run.epochs):
        metrics = trainer.train_epoch(in_process_batches(train_images, run.batch_size, run.views, generator))
        metrics.update(trainer.evaluate(eval_data))
        print(f"epoch {metrics['epoch']} knn_top1 {metrics['knn_top1']:.4f} loss {metrics['loss']:.3f} "
              f"images/s {metrics['images_per_s']:.0f} eval {metrics['eval_seconds']:.1f}s "
              f"elapsed {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    main()
