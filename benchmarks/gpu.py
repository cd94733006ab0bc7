"""The GPU path: SimCLR ResNet-18 at 32 px, end to end through Ray Data + Ray Train against the ceiling of
the model alone (forward + backward + optimiser step on view batches already on the device).
    .venv/bin/python benchmarks/gpu.py [--batch-size 512] [--epochs 2] [--images 60000] [--device cuda]
    .venv/bin/python benchmarks/gpu.py --backbone resnet50 --size 224 --data data/folder-prepared --batch-size 256
(the second: ResNet-50 at 224 px on an encoded variable-size folder, views cropped from the originals; the
last epoch's kNN monitor seconds are printed too).
1. Ceiling, in process: fp32; bf16 autocast; bf16 + channels_last; bf16 + channels_last + torch.compile
   (the compile row's first steps, the compilation, are not timed).
2. End to end, one Ray Train worker with the GPU (NCCL is set up by Ray Train as soon as there are two
   workers; one is measured here), Fashion-MNIST views cropped to 32 px, bf16 + channels_last:
   views made by the Ray Data actors on CPUs (views.where: data, 1 actor per --augment-cpus) and made on
   the GPU by the worker (views.where: trainer); images/s of the last epoch and its share of the ceiling.
--device cpu runs the same on CPU with small figures: a check of the code, not a measurement.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def run_config(args, **changes):
    from raysl.config import RunConfig, load_sweep_config

    base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base.model_dump(mode="json")
    base.update({
        "model": {"backbone": args.backbone}, "batch_size": args.batch_size, "epochs": args.epochs,
        "views": {**base["views"], "crops": [{"count": 2, "size": args.size, "scale": [0.2 if args.size > 64 else 0.5, 1.0]}]},
        "evaluation": {"bank_limit": 10000, "query_limit": 2000},
        "precision": "bf16" if args.device == "cuda" else "fp32",
    })
    base["data"]["train_limit"] = args.images
    if args.data:
        base["data"] = {"path": str(Path(args.data).resolve()), "train_limit": args.images}
    for key, value in changes.items():
        base[key] = value
    return RunConfig.model_validate(base)


def ceiling(args, **changes) -> float:
    """images/s of training steps on uint8 view batches already on the device."""
    from raysl.training.loop import Trainer

    run = run_config(args, **changes)
    device = torch.device(args.device)
    channels = args.channels
    trainer = Trainer(run, channels, [0.4] * channels, [0.25] * channels, steps_per_epoch=10**6, device=device)
    views = [torch.randint(0, 256, (args.batch_size, channels, args.size, args.size), dtype=torch.uint8, device=device)
             for _ in range(2)]
    trainer.train_epoch([views] * 5)  # warm-up (and compilation)
    steps = args.steps
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train_epoch([views] * steps)  # loss.item() syncs every step
    return steps * args.batch_size / (time.perf_counter() - started)


def end_to_end(args, data_uri: str, where: str, storage: str) -> dict:
    from raysl.ray_glue.pipeline import configure_data_context
    from raysl.ray_glue.trainer import build_trainer

    run = run_config(args, channels_last=True)
    gpu = args.device == "cuda"
    run = run.model_copy(update={
        "views": run.views.model_copy(update={"where": where}),
        "resources": run.resources.model_copy(update={
            "workers": 1, "gpus_per_worker": 1.0 if gpu else 0.0, "data_actors": args.augment_cpus,
            "cpus_per_worker": 2.0 if gpu else 1.0, "torch_threads": 2 if gpu else 1, "data_cpus": 1.0 if gpu else 0.5,
        }),
    })
    configure_data_context(run)
    trainer = build_trainer(run, data_uri, storage_path=storage, name=f"gpu-{where}", git_commit="bench")
    return trainer.fit().metrics


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--backbone", default="resnet18", help="small_cnn or a torchvision model name")
    parser.add_argument("--size", type=int, default=32, help="crop side in px (32: CIFAR stem for ResNets, 224: ImageNet)")
    parser.add_argument("--data", help="a prepared dataset (default: Fashion-MNIST, prepared on first use)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps for the ceiling")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=None, help="train on the first N images (default: all)")
    parser.add_argument("--augment-cpus", type=int, default=max(1, (os.cpu_count() or 2) - 4),
                        help="augmentation actors for views.where: data (1 CPU each on a GPU machine, 0.5 on --device cpu)")
    args = parser.parse_args()
    from raysl.ingest.dataset import read_manifest
    from raysl.ingest.dataset import channels_of

    args.channels = channels_of(read_manifest(str(Path(args.data).resolve()))) if args.data else 1
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}, torch {torch.__version__}, SimCLR {args.backbone}, {args.size} px, batch {args.batch_size}")

    rows = [("fp32", ceiling(args, precision="fp32", channels_last=False))]
    if args.device == "cuda":
        rows.append(("bf16", ceiling(args, precision="bf16", channels_last=False)))
    rows.append(("+ channels_last", ceiling(args, channels_last=True)))
    rows.append(("+ torch.compile", ceiling(args, channels_last=True, compile=True)))
    print("ceiling (model alone, views already on the device):")
    for label, rate in rows:
        print(f"  {label:18s} {rate:9,.0f} images/s")
    top = dict(rows)["+ channels_last"]  # what the end-to-end runs use (bf16 on a GPU)

    import ray

    from raysl.ingest.resolve import resolve_data

    data_uri = resolve_data(run_config(args))
    ray.init(logging_level=logging.WARNING, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        results = [(where, end_to_end(args, data_uri, where, storage)) for where in ("data", "trainer")]
    ray.shutdown()
    print(f"end to end (Ray Data + Ray Train, 1 worker, last of {args.epochs} epochs; ceiling = channels_last row):")
    for where, metrics in results:
        print(f"  views.where {where:8s} {metrics['images_per_s']:9,.0f} images/s  {metrics['images_per_s'] / top:6.1%} of the ceiling"
              f"  data wait {metrics['data_wait_fraction']:6.1%}  kNN monitor {metrics['eval_seconds']:.1f} s")


if __name__ == "__main__":
    main()
