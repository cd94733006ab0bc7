"""Every method on one fixed CPU budget: best kNN top-1, images/s and epochs, side by side.

Each method trains its sweep file's base config (sweeps/<method>.yaml) in-process (no Ray: the same
Trainer, views and kNN monitor as a trial), on one thread, for a fixed wall-clock budget. A short probe
(20 steps and one kNN evaluation, counted in the budget) measures the method's step and evaluation time;
the run then gets as many whole epochs as fit in what is left, so its learning-rate schedule ends on
time. Methods run `--parallel` at a time (one core each).

    python benchmarks/methods.py --minutes 9 --parallel 2
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["simclr", "moco", "simsiam", "byol", "wmse", "logo-moco", "logo-simsiam"]
PIXEL_KNN = 0.789


def child(method: str, minutes: float, output: Path) -> None:
    import torch

    sys.path.insert(0, str(ROOT))
    from raysl.ingest.resolve import resolve_data
    from raysl.config import load_sweep_config
    from raysl.ingest.dataset import load_split, read_manifest
    from raysl.training.local import in_process_batches, train_in_process
    from raysl.training.evaluation import load_eval_sets
    from raysl.training.loop import Trainer

    started = time.perf_counter()
    torch.set_num_threads(1)
    run = load_sweep_config(ROOT / "sweeps" / f"{method}.yaml").base
    data_uri = resolve_data(run)
    manifest = read_manifest(data_uri)
    images = torch.from_numpy(load_split(data_uri, "train", limit=run.data.train_limit)[0])
    steps_per_epoch = images.shape[0] // run.batch_size

    # Probe: seconds per step (after 5 warm-up steps) and one evaluation.
    probe = Trainer(run, manifest["image_shape"][2], manifest["mean"], manifest["std"], steps_per_epoch=25)
    generator = torch.Generator().manual_seed(0)
    batches = list(in_process_batches(images[: 25 * run.batch_size], run.batch_size, run.views, generator))
    probe.train_epoch(batches[:5])
    probe.steps_per_epoch = 20
    step_seconds = probe.train_epoch(batches[5:])["train_seconds"] / 20
    eval_seconds = probe.evaluate(load_eval_sets(run, data_uri))["eval_seconds"]
    left = minutes * 60 - (time.perf_counter() - started)
    epoch_seconds = steps_per_epoch * step_seconds * 1.05 + eval_seconds  # views + slack
    epochs = max(1, math.floor(left / epoch_seconds))
    warmup = min(run.schedule.warmup_epochs, epochs)
    run = run.model_copy(update={
        "epochs": epochs, "storage_path": str(output.parent), "name": method,
        "schedule": run.schedule.model_copy(update={"warmup_epochs": warmup}),
    })
    shutil.rmtree(output.parent / method, ignore_errors=True)
    train_in_process(run, data_uri, log=lambda line: print(f"[{method}] {line}", flush=True))
    records = [json.loads(line) for line in (output.parent / method / "metrics.jsonl").read_text().splitlines()]
    best = max(records, key=lambda r: r["knn_top1"])
    result = {
        "method": method, "best_knn_top1": best["knn_top1"], "best_epoch": best["epoch"], "epochs": epochs,
        "images_per_s": sum(r["images_per_s"] for r in records) / len(records),
        "final_embedding_std": records[-1]["embedding_std"], "embedding_dim": records[-1]["embedding_dim"],
        "wall_minutes": (time.perf_counter() - started) / 60, "budget_minutes": minutes,
        "knn_per_epoch": [round(r["knn_top1"], 4) for r in records],
    }
    output.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget per method (one thread)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--out", default=str(ROOT / "results" / "bench-methods"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child:
        child(args.child, args.minutes, out / f"{args.child}.json")
        return
    pending, running, failed = list(args.methods), [], []
    while pending or running:
        while pending and len(running) < args.parallel:
            method = pending.pop(0)
            command = [sys.executable, __file__, "--child", method, "--minutes", str(args.minutes), "--out", str(out)]
            running.append((method, subprocess.Popen(command)))
        time.sleep(2)
        for method, process in list(running):
            if process.poll() is not None:
                running.remove((method, process))
                if process.returncode:
                    failed.append(method)
    print(f"\nEvery method on {args.minutes:g} minutes of one core each ({args.parallel} at a time); "
          f"kNN k=200 T=0.1, 60k bank / 10k queries; pixel-space kNN {PIXEL_KNN:.1%}")
    print("| method | best kNN top-1 | epochs (best at) | images/s | kNN per epoch | beats pixels |")
    print("|---|---|---|---|---|---|")
    for method in args.methods:
        path = out / f"{method}.json"
        if method in failed or not path.exists():
            print(f"| {method} | failed | | | | |")
            continue
        r = json.loads(path.read_text())
        print(f"| {method} | {r['best_knn_top1']:.1%} | {r['epochs']} ({r['best_epoch']}) | {r['images_per_s']:.0f} | "
              f"{' / '.join(f'{k:.3f}' for k in r['knn_per_epoch'])} | {'yes' if r['best_knn_top1'] > PIXEL_KNN else 'no'} |")


if __name__ == "__main__":
    main()
