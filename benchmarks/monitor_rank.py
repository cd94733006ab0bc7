"""Does the limited kNN monitor rank trials like the protocol's? The trainer benchmark shows the protocol's
monitor (60k bank, 10k queries) costs about a fifth of a CPU epoch and a limited one (evaluation.bank_limit
10000, query_limit 5000) about 4%, at lower figures. A sweep only needs the ranking (ASHA, the leaderboard),
so this trains a spread of quickstart variants in this process (no Ray: the same Trainer and views) and
scores each with both monitors, side by side:
    .venv/bin/python benchmarks/monitor_rank.py [--images 20000] [--epochs 1] [--parallel 2]
Prints each variant's two scores and the rank correlation (Spearman, pandas) between them.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import pandas  # with Ray Data / Tune; Tune's result frames are pandas too

ROOT = Path(__file__).resolve().parents[1]
TEMPERATURES = [0.05, 0.1, 0.2, 0.5, 1.0]
LEARNING_RATES = [3e-3, 3e-4]
LIMITED = {"bank_limit": 10000, "query_limit": 5000}


def score(job: tuple[dict, str]) -> tuple[float, float, float, float]:
    """Train one variant; return (protocol kNN, limited kNN, protocol seconds, limited seconds)."""
    import torch

    from raysl.config import RunConfig
    from raysl.ingest.dataset import read_manifest
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
    scored = []
    for variant in (run, limited):
        sets = load_eval_sets(variant, data_uri)
        started = time.perf_counter()
        scored.append((trainer.evaluate(sets)["knn_top1"], time.perf_counter() - started))
    (full, full_seconds), (limited_knn, limited_seconds) = scored
    return full, limited_knn, full_seconds, limited_seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=20000, help="train on the first N images (default 20000)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=2, help="variants trained at a time, one thread each")
    args = parser.parse_args()

    from raysl.ingest.resolve import resolve_data
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
    scores = pandas.DataFrame(results, columns=["protocol", "limited", "protocol_s", "limited_s"])
    print(f"{len(variants)} quickstart variants, {args.epochs} epoch(s) of {args.images} images each, in-process")
    print(f"{'temperature':>11s} {'lr':>7s} {'protocol 60k/10k':>17s} {'limited 10k/5k':>15s}")
    for (temperature, lr), full, limited in zip(variants, scores["protocol"], scores["limited"]):
        print(f"{temperature:11g} {lr:7g} {full:17.4f} {limited:15.4f}")
    best_full, best_limited = scores["protocol"].idxmax(), scores["limited"].idxmax()
    print(f"Spearman rank correlation: {scores['protocol'].corr(scores['limited'], method='spearman'):.3f}; "
          f"best variant by the protocol: {variants[best_full]}, by the limited monitor: {variants[best_limited]} "
          f"(its protocol score {scores['protocol'][best_limited]:.4f} vs {scores['protocol'][best_full]:.4f})")
    print(f"monitor seconds per evaluation: protocol {scores['protocol_s'].mean():.1f} s, limited {scores['limited_s'].mean():.1f} s")

if __name__ == "__main__":
    main()
