"""Peak memory of the encoded data path at two dataset sizes 5x apart: `raysl prepare image-folder` (the whole
process tree), then a 2-epoch `raysl train` on Ray per process kind (driver, read tasks, augmentation actors,
the Train worker's iteration; rss - shared, summed per kind, sampled every 0.5 s by benchmarks/processes.py):

    .venv/bin/python benchmarks/folder_memory.py [--sizes 1000 5000] [--size 64]

Folders are raysl.ingest.synthetic's (100-500 px JPEG/PNG), made under data/ on first use. The kNN monitor is
limited to 500 bank / 200 query images so that its evaluation images (held in memory at this issue's sizes)
do not hide the data path's figures. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from processes import ProcessSampler, psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("driver", "read tasks", "augmentation actors", "Train workers", "Train controllers")


def tree_peak_rss(command: list[str], **kwargs) -> tuple[int, float]:
    """(peak summed RSS of the process and its children in bytes, seconds) of a command run to completion."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, **kwargs)
    peak, root = 0, psutil.Process(process.pid)
    while process.poll() is None:
        try:
            total = sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            total = 0
        peak = max(peak, total)
        time.sleep(0.05)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return peak, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=[1000, 5000])
    parser.add_argument("--size", type=int, default=64, help="crop size of the training run")
    args = parser.parse_args()
    from raysl.ingest.synthetic import make_folder

    python = str(Path(sys.executable))
    rows = []
    for images in args.sizes:
        folder = ROOT / "data" / f"bench-folder-{images}"
        if not (folder / "train").exists():
            make_folder(folder, train=images, val=max(10, images // 10))
        out = ROOT / "data" / f"bench-memory-{images}-prepared"
        prepare_peak, prepare_seconds = tree_peak_rss(
            [python, "-m", "raysl", "prepare", "image-folder", str(folder), "--out", str(out), "--no-progress"])
        config = ROOT / "data" / f"bench-memory-{images}.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"path": str(out)}, "epochs": 2, "batch_size": 128,
            "model": {"width": 16}, "views": {"crops": [{"count": 2, "size": args.size, "scale": [0.2, 1.0]}]},
            "evaluation": {"bank_limit": 500, "query_limit": 200, "knn_k": 20},
            "resources": {"workers": 1, "cpus_per_worker": 1, "data_cpus": 0.5, "data_actors": 1},
            "storage_path": str(ROOT / "data" / "bench-memory-results"), "name": f"run-{images}-{os.getpid()}",
        }))
        process = subprocess.Popen([python, "-m", "raysl", "train", str(config)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        with ProcessSampler(process.pid) as sampler:
            output = process.communicate()[0]
        if process.returncode:
            raise SystemExit(f"raysl train exited {process.returncode}:\n{output[-3000:]}")
        rows.append((images, prepare_peak, prepare_seconds, dict(sampler.process_peak)))
        print(f"  {images} images: prepare {prepare_peak / 2**20:.0f} MiB in {prepare_seconds:.0f} s; per kind, all its "
              "processes together (processes seen): " + ", ".join(
                  f"{kind} {sampler.peak.get(kind, 0) / 2**20:.0f} MiB ({len(sampler.processes.get(kind, ()))})" for kind in KINDS),
              flush=True)
    print(f"\npeak memory (MiB; prepare: RSS of the process tree; training: the largest process of each kind, rss - shared), "
          f"2 epochs at {args.size} px, {os.cpu_count()} cores")
    print(f"{'images':>7s} {'prepare':>8s} " + " ".join(f"{kind:>20s}" for kind in KINDS))
    for images, prepare_peak, _, peaks in rows:
        print(f"{images:7d} {prepare_peak / 2**20:8.0f} " + " ".join(f"{peaks.get(kind, 0) / 2**20:20.0f}" for kind in KINDS))
    (small, *_), (large, *_) = rows
    print(f"ratio {large}/{small} images: prepare {rows[1][1] / rows[0][1]:.2f}x; " + ", ".join(
        f"{kind} {rows[1][3].get(kind, 0) / max(rows[0][3].get(kind, 1), 1):.2f}x" for kind in KINDS))


if __name__ == "__main__":
    main()
