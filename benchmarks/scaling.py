"""Scaling on one machine: images/s of a Ray Train run with 1 and 2 Train workers and 1 and 2 CPUs of
augmentation, on a real multi-node Ray cluster made on this machine (raysl.ray_glue.local_cluster: a 0-CPU
head, an augment-role node, one 1-CPU train-role node per worker), with the peak memory of each kind of process.
    .venv/bin/python benchmarks/scaling.py [--workers 1 2] [--augment-cpus 1 2] [--images 20000] [--epochs 2]
The quickstart's run config (global batch 128, split over the workers; gloo DDP over loopback), placed by node
labels as on a cluster; augmentation actors of 0.5 CPU, one per augmentation CPU, read tasks in the rest.
The kNN monitor is cut to a 2k bank / 1k queries: this measures training throughput, not the monitor.
images/s and data wait are the last epoch's (the first also pays Ray Data's actor start-up).
Memory: resident set size minus shared pages (what killing the process would free), peak over the run,
sampled every 0.5 s, summed per kind (for 2 workers, both workers' together).
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
from pathlib import Path

# Token auth, as `ray start` makes clusters, with a token of this run's own: read when Ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
from processes import ProcessSampler, psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def measure(base, data_uri: str, workers: int, augment_cpus: int, args) -> tuple[dict, dict]:
    import ray

    from raysl.ray_glue.local_cluster import ROLE, LocalCluster
    from raysl.ray_glue.pipeline import configure_data_context
    from raysl.ray_glue.trainer import build_trainer

    cluster = LocalCluster(augment_cpus=augment_cpus, train_cpus=1, train_nodes=workers)
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
        run = base.model_copy(update={
            "epochs": args.epochs,
            "data": base.data.model_copy(update={"train_limit": args.images}),
            "evaluation": base.evaluation.model_copy(update={"bank_limit": 2000, "query_limit": 1000}),
            "resources": base.resources.model_copy(update={
                "workers": workers, "cpus_per_worker": 1.0, "torch_threads": 1,
                "data_cpus": 0.5, "data_actors": augment_cpus,
                "augment_on": {ROLE: "augment"}, "train_on": {ROLE: "train"},
            }),
        })
        configure_data_context(run)
        with ProcessSampler(os.getpid()) as sampler:
            trainer = build_trainer(run, data_uri, storage_path=str(Path(cluster.root) / "runs"),
                                    name=f"w{workers}-a{augment_cpus}", git_commit="bench")
            metrics = trainer.fit().metrics
    finally:
        cluster.shutdown()
    return metrics, dict(sampler.peak)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--augment-cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--images", type=int, default=20000, help="train on the first N images per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    from raysl.ingest.resolve import resolve_data
    from raysl.config import load_sweep_config

    base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base
    data_uri = resolve_data(base)
    rows = []
    for workers in args.workers:
        for augment_cpus in args.augment_cpus:
            metrics, memory = measure(base, data_uri, workers, augment_cpus, args)
            rows.append((workers, augment_cpus, metrics, memory))
    print(f"last epoch of {args.epochs} ({args.images} images), quickstart run config, global batch 128, "
          f"{psutil.cpu_count()} cores on this machine")
    print(f"{'workers':>7s} {'aug CPUs':>8s} {'images/s':>9s} {'vs 1+1':>6s} {'data wait':>9s}  peak memory (MiB, rss - shared)")
    reference = rows[0][2]["images_per_s"]
    for workers, augment_cpus, metrics, memory in rows:
        listed = ", ".join(f"{kind} {used / 2**20:.0f}" for kind, used in sorted(memory.items(), key=lambda item: -item[1]))
        print(f"{workers:7d} {augment_cpus:8d} {metrics['images_per_s']:9.0f} {metrics['images_per_s'] / reference:5.2f}x "
              f"{metrics['data_wait_fraction']:8.1%}  {listed}")


if __name__ == "__main__":
    main()
