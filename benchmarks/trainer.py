"""Trainer fed or starved: one Ray Train run's epoch split into waiting for data, compute, the kNN monitor
and writing the checkpoint, as the loop measures them (the same figures every report carries to Tune).

Runs the quickstart's run config on Fashion-MNIST through Ray Data + Ray Train (an embedded local Ray), once
per augmentation CPU budget given, and prints the split side by side:
    .venv/bin/python benchmarks/trainer.py [--data-cpus 0.25 0.5] [--epochs 2] [--images 60000]
data wait = time the loop blocked on the next batch; compute = the rest of the epoch's training time;
kNN = the monitor: the protocol's 60k bank + 10k queries (features in eval mode, then chunked matmul + top-k,
on the accelerator when there is one), and a last row with a limited monitor (evaluation.bank_limit 10000,
query_limit 5000), what a CPU-only sweep can use to keep the monitor near 5% of an epoch.
The last epoch is reported: the first also pays Ray Data's actor start-up, once per run.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-cpus", type=float, nargs="+", default=[0.25, 0.5],
                        help="CPUs of the augmentation actor (and of each read task); worker 1 + 2 x this <= the CPUs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="train on the first N images (default: all)")
    args = parser.parse_args()

    import ray

    from raysl.ingest.resolve import resolve_data
    from raysl.config import load_sweep_config
    from raysl.ray_glue.pipeline import configure_data_context
    from raysl.ray_glue.trainer import build_trainer

    base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base
    data_uri = resolve_data(base)
    ray.init(logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
    rows = []
    with tempfile.TemporaryDirectory() as storage:
        limited = base.evaluation.model_copy(update={"bank_limit": 10000, "query_limit": 5000})
        settings = [(data_cpus, base.evaluation) for data_cpus in args.data_cpus] + [(max(args.data_cpus), limited)]
        for data_cpus, evaluation in settings:
            run = base.model_copy(update={
                "epochs": args.epochs, "evaluation": evaluation,
                "data": base.data.model_copy(update={"train_limit": args.images}),
                "resources": base.resources.model_copy(update={"cpus_per_worker": 1.0, "data_cpus": data_cpus}),
            })
            configure_data_context(run)
            name = f"data-cpus-{data_cpus}-{'limited' if evaluation.bank_limit else 'full'}"
            trainer = build_trainer(run, data_uri, storage_path=storage, name=name, git_commit="bench")
            metrics = trainer.fit().metrics
            epoch = metrics["train_seconds"] + metrics["eval_seconds"] + metrics["checkpoint_seconds"]
            monitor = f"{evaluation.bank_limit // 1000}k/{evaluation.query_limit // 1000}k" if evaluation.bank_limit else "60k/10k"
            rows.append((data_cpus, monitor, metrics, epoch))
    ray.shutdown()
    print(f"last epoch of {args.epochs}, quickstart run config, 1 Train worker (1 CPU, 1 thread), 1 augmentation actor")
    print(f"{'augment CPUs':>12s} {'bank/queries':>12s} {'images/s':>9s} {'data wait':>14s} {'compute':>9s} {'kNN':>14s} {'checkpoint':>11s} {'knn_top1':>8s}")
    for data_cpus, monitor, metrics, epoch in rows:
        wait, train = metrics["data_wait_seconds"], metrics["train_seconds"]
        print(f"{data_cpus:12g} {monitor:>12s} {metrics['images_per_s']:9.0f} {wait:6.1f}s ({wait / train:4.1%}) {train - wait:8.1f}s "
              f"{metrics['eval_seconds']:5.1f}s ({metrics['eval_seconds'] / epoch:4.1%}) {metrics['checkpoint_seconds']:10.2f}s {metrics['knn_top1']:8.3f}")
    print("data wait % of the epoch's training time; kNN % of the whole epoch (training + kNN + checkpoint)")


if __name__ == "__main__":
    main()
