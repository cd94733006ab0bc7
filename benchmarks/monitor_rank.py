"""Does the limited kNN monitor rank trials like the protocol's? The trainer benchmark shows the protocol's
monitor (60k bank, 10k queries) costs about a fifth of a CPU epoch and a limited one (evaluation.bank_limit
10000, query_limit 5000) about 4%, at lower figures. A sweep only needs the ranking (ASHA, the leaderboard),
so this trains a spread of quickstart variants in this process (no Ray: the same Trainer and views) and
scores each with both monitors, side by side:
    .venv/bin/python benchmarks/monitor_rank.py [--images 20000] [--epochs 1] [--parallel 2]
Prints each variant's two scores and the rank correlation (Spearman) between them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES = [0.05, 0.1, 0.2, 0.5, 1.0]
LEARNING_RATES = [3e-3, 3e-4]
LIMITED = {"bank_limit": 10000, "query_limit": 5000}


def score(job: tuple[dict, str]) -> tuple[float, float, float, float]:
    """Train one variant; return (protocol kNN, limited kNN, protocol seconds, limited seconds)."""
    import torch

    from raysl.config import RunConfig
    from raysl.data.prepare import read_manifest
    from raysl.data.pretraining import in_memory_epoch_images, plan_pretraining
    from raysl.training.evaluation import load_eval_sets
    from raysl.training.local import in_process_batches
    from raysl.training.loop import Trainer

    torch.set_num_threads(1)
    config, data_uri = job
    run = RunConfig.model_validate(config)
    limited = run.model_copy(update={"evaluation": run.evaluation.model_copy(update=LIMITED)})
    manifest = read_manifest(data_uri)
    images = torch.from_numpy(in_memory_epoch_images(plan_pretraining(run, data_uri)))
    trainer = Trainer(run, manifest["image_shape"][2], manifest["mean"], manifest["std"],
                      steps_per_epoch=images.shape[0] // run.batch_size)
    generator = torch.Generator().manual_seed(run.seed)
    for _ in range(run.epochs):
        trainer.train_epoch(in_process_batches(images, run.batch_size, run.views, generator))
    figures = []
    for variant in (run, limited):
        sets = load_eval_sets(variant, data_uri)
        started = time.perf_counter()
        knn = trainer.evaluate(sets)["knn_top1"]
        figures += [knn, time.perf_counter() - started]
    return figures[0], figures[2], figures[1], figures[3]


def ranks(values: list[float]) -> list[float]:
    """Ranks (1 = lowest), ties sharing their mean rank."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for index in order[start : end + 1]:
            result[index] = (start + end) / 2 + 1
        start = end + 1
    return result


def spearman(a: list[float], b: list[float]) -> float:
    ra, rb = ranks(a), ranks(b)
    mean_a, mean_b = sum(ra) / len(ra), sum(rb) / len(rb)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(ra, rb))
    spread = (sum((x - mean_a) ** 2 for x in ra) * sum((y - mean_b) ** 2 for y in rb)) ** 0.5
    return covariance / spread


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000, help="train on the first N images (default 20000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="variants trained at a time, one thread each")
    args = parser.parse_args()

    from raysl.cli import resolve_data
    from raysl.config import apply_assignment, load_sweep_config

    base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base
    data_uri = resolve_data(base)
    base = base.model_copy(update={"epochs": args.epochs,
                                   "data": base.data.model_copy(update={"train_limit": args.images})})
    variants = [(temperature, lr) for lr in LEARNING_RATES for temperature in TEMPERATURES]
    jobs = [(apply_assignment(base, {"method.temperature": t, "optimizer.lr": lr}).model_dump(mode="json"), data_uri)
            for t, lr in variants]
    with multiprocessing.get_context("spawn").Pool(args.parallel) as pool:
        results = pool.map(score, jobs)
    print(f"{len(variants)} quickstart variants, {args.epochs} epoch(s) of {args.images} images each, in-process")
    print(f"{'temperature':>11s} {'lr':>7s} {'protocol 60k/10k':>17s} {'limited 10k/5k':>15s}")
    for (temperature, lr), (full, limited, _, _) in zip(variants, results):
        print(f"{temperature:11g} {lr:7g} {full:17.4f} {limited:15.4f}")
    full, limited = [r[0] for r in results], [r[1] for r in results]
    best_full, best_limited = max(range(len(full)), key=full.__getitem__), max(range(len(limited)), key=limited.__getitem__)
    print(f"Spearman rank correlation: {spearman(full, limited):.3f}; best variant by the protocol: {variants[best_full]}, "
          f"by the limited monitor: {variants[best_limited]} (its protocol score {full[best_limited]:.4f} vs {full[best_full]:.4f})")
    print(f"monitor seconds per evaluation: protocol {sum(r[2] for r in results) / len(results):.1f} s, "
          f"limited {sum(r[3] for r in results) / len(results):.1f} s")


if __name__ == "__main__":
    main()
