"""What one kNN monitor evaluation costs: seconds and peak memory per process, before and after the monitor
that streams its images and shares them across ranks. Each case runs in a fresh process (so peak RSS is its
own); with --ranks 2, two gloo processes of one thread each against one process of two threads.

    .venv/bin/python benchmarks/monitor.py                     # this checkout
    git worktree add /tmp/raysl-before d663881                 # the monitor before (rank 0 held every pixel)
    .venv/bin/python benchmarks/monitor.py --raysl /tmp/raysl-before --ranks 1

Cases: `fashion-mnist` (the quickstart's small CNN, the protocol's 60k bank / 10k queries, 28 px) and
`folder-1000` / `folder-5000` (generated variable-size folders, data/bench-memory-{1000,5000}-prepared, made by
benchmarks/folder_memory.py; evaluation images at --image-size px, the image-folder sweep's small CNN), and
`folder-20000x` (folder-5000's train shards listed 4 times: a 20,000-image bank; --cases to ask for it).
Variants: `default` (the pixel cache as configured: a share that fits in evaluation.pixel_cache_mb is kept
decoded) and `streamed` (pixel_cache_mb 0: every evaluation reads and decodes its share again).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"folder-1000": "data/bench-memory-1000-prepared", "folder-5000": "data/bench-memory-5000-prepared",
           "folder-20000x": "data/bench-memory-20000x-prepared"}


def repeated_dataset(source: Path, target: Path, copies: int = 4) -> None:
    """`target`: a dataset whose train split lists `source`'s train shards `copies` times (symlinks), so 20,000
    bank rows without generating them: memory that grows with the bank shows between 5000 and this."""
    if (target / "manifest.json").exists():
        return
    manifest = json.loads((source / "manifest.json").read_text())
    (target / "train").mkdir(parents=True, exist_ok=True)
    if not (target / "test").exists():
        (target / "test").symlink_to(source.resolve() / "test")
    shards = []
    for copy in range(copies):
        for shard in manifest["splits"]["train"]["shards"]:
            name = f"train/copy{copy}-{shard.rsplit('/', 1)[-1]}"
            if not (target / name).exists():
                (target / name).symlink_to(source.resolve() / shard)
            manifest["files"][name] = manifest["files"][shard]
            shards.append(name)
    manifest["splits"]["train"]["shards"] = shards
    manifest["splits"]["train"]["count"] = sum(manifest["files"][name]["rows"] for name in shards)
    (target / "manifest.json").write_text(json.dumps(manifest))


def rss_mib() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def case_config(case: str, variant: str, image_size: int) -> tuple[dict, str]:
    from raysl.ingest.resolve import resolve_data
    from raysl.config import load_sweep_config

    if case == "fashion-mnist":
        base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base
        config, uri = base.model_dump(mode="json"), resolve_data(base)
    else:
        config = load_sweep_config(ROOT / "sweeps" / "image-folder.yaml").base.model_dump(mode="json")
        uri = str(ROOT / FOLDERS[case])
        if case == "folder-20000x":
            repeated_dataset(ROOT / FOLDERS["folder-5000"], ROOT / FOLDERS[case])
        config["data"]["path"] = uri
        config["evaluation"]["image_size"] = image_size
    if variant == "streamed":
        config["evaluation"]["pixel_cache_mb"] = 0
    return config, uri


def measure(config: dict, uri: str, evaluations: int) -> dict:

    from raysl.config import RunConfig
    from raysl.ingest.dataset import read_manifest
    from raysl.ingest.dataset import channels_of
    from raysl.training.evaluation import load_eval_sets
    from raysl.training.loop import Trainer

    run = RunConfig.model_validate({key: value for key, value in config.items()})
    manifest = read_manifest(uri)
    trainer = Trainer(run, channels_of(manifest), manifest["mean"], manifest["std"], steps_per_epoch=1)
    baseline = rss_mib()
    started = time.perf_counter()
    sets = load_eval_sets(run, uri)
    loaded = time.perf_counter() - started
    seconds, knn = [], None
    for _ in range(evaluations):
        started = time.perf_counter()
        knn = trainer.evaluate(sets)["knn_top1"]
        seconds.append(time.perf_counter() - started)
    return {"load_s": loaded, "eval_s": seconds, "knn_top1": knn, "baseline_mib": baseline, "peak_mib": peak_mib()}


def _rank(rank: int, world: int, init: str, config: dict, uri: str, evaluations: int, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    results[rank] = measure(config, uri, evaluations)
    if world > 1:
        dist.destroy_process_group()


def one(args) -> None:
    """Run one case in this process (and its rank processes); print one JSON line."""
    if args.raysl:
        sys.path.insert(0, args.raysl)
    import tempfile

    import torch.multiprocessing as mp

    config, uri = case_config(args.one, args.variant, args.image_size)
    if args.raysl:  # the earlier schema has no fields of the new monitor
        config["evaluation"] = {key: value for key, value in config["evaluation"].items()
                                if key not in ("every", "feature_dtype", "pixel_cache_mb")}
        config["optimizer"] = {key: value for key, value in config["optimizer"].items() if key not in ("lr_scaling", "reference_batch")}
        config["model"] = {key: value for key, value in config["model"].items() if key != "stem"}
    if args.ranks == 1:
        results = {}
        _rank(0, 1, "", config, uri, args.evaluations, results)
    else:
        with mp.Manager() as manager, tempfile.TemporaryDirectory() as directory:
            shared = manager.dict()
            mp.spawn(_rank, args=(args.ranks, f"{directory}/init", config, uri, args.evaluations, shared), nprocs=args.ranks)
            results = dict(shared)
    first = results[0]
    print(json.dumps({
        "case": args.one, "variant": args.variant, "ranks": args.ranks, "code": args.raysl or "this checkout",
        "knn_top1": first["knn_top1"], "load_s": max(r["load_s"] for r in results.values()),
        "eval_s": [max(r["eval_s"][i] for r in results.values()) for i in range(args.evaluations)],
        "peak_mib": max(r["peak_mib"] for r in results.values()),
        "growth_mib": max(r["peak_mib"] - r["baseline_mib"] for r in results.values()),
    }))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--raysl", help="import raysl from this checkout instead (e.g. a worktree of an earlier commit)")
    parser.add_argument("--cases", default="fashion-mnist,folder-1000,folder-5000")
    parser.add_argument("--variants", default="default,streamed", help="default, streamed (ignored with --raysl)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts (the earlier code: 1)")
    parser.add_argument("--evaluations", type=int, default=2, help="evaluations per case (the first decodes a cache)")
    parser.add_argument("--image-size", type=int, default=160, help="folder cases' evaluation image side")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        args.ranks = int(args.ranks)
        return one(args)
    variants = ["before"] if args.raysl else args.variants.split(",")
    print(f"{'case':13s} {'code':18s} {'variant':9s} {'ranks':>5s} {'load s':>7s} {'eval s (1st, 2nd)':>18s} "
          f"{'peak MiB':>9s} {'growth MiB':>10s} {'kNN':>7s}")
    for case in args.cases.split(","):
        for variant in variants:
            if variant == "streamed" and case == "fashion-mnist":
                continue  # cached either way at 52 MiB; streaming it is the folder cases' question
            for ranks in (int(value) for value in args.ranks.split(",")):
                command = [sys.executable, __file__, "--one", case, "--variant", variant, "--ranks", str(ranks),
                           "--evaluations", str(args.evaluations), "--image-size", str(args.image_size)]
                command += ["--raysl", args.raysl] if args.raysl else []
                output = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                if output.returncode:
                    print(f"{case} {variant} {ranks}: failed\n{output.stderr[-2000:]}")
                    continue
                row = json.loads(output.stdout.strip().splitlines()[-1])
                evals = ", ".join(f"{value:.1f}" for value in row["eval_s"])
                code = "before" if args.raysl else "after"
                print(f"{case:13s} {code:18s} {variant:9s} {ranks:5d} {row['load_s']:7.1f} {evals:>18s} "
                      f"{row['peak_mib']:9.0f} {row['growth_mib']:10.0f} {row['knn_top1']:7.4f}", flush=True)


if __name__ == "__main__":
    main()
