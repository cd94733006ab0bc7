"""Decode + crop throughput on a folder of variable-size JPEGs: raysl's Ray Data path (Parquet shards of the
encoded files -> augmentation actors that decode and crop each original image -> iter_torch_batches) against
what a user would write with torchvision (ImageFolder + v2 RandomResizedCrop(224), flip, colour jitter,
grayscale in a DataLoader), same cores, same images, 2 views per image, source images/s delivered to a consumer
that does nothing:

    .venv/bin/python benchmarks/folder_pipeline.py [--images 2000] [--workers 1 2] [--size 224]

The folder is raysl.ingest.synthetic's (100-500 px sides, JPEG q60-95, 12% PNG, 8% gray), made under data/ on
first use and prepared there with `raysl prepare image-folder` (encoded mode). Each side runs one warm-up epoch,
then is timed over --epochs epochs. Workers: DataLoader worker processes against augmentation actors (each
with 1 CPU); the consumer is this process in both.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
BATCH = 64


def make_data(images: int) -> tuple[Path, str]:
    from raysl.ingest.dataset import read_manifest
    from raysl.ingest.prepare import prepare
    from raysl.ingest.synthetic import make_folder

    folder = ROOT / "data" / f"bench-folder-{images}"
    if not (folder / "train").exists():
        print(f"making {images} images under {folder}", flush=True)
        make_folder(folder, train=images, val=max(10, images // 10))
    prepared = ROOT / "data" / f"bench-folder-{images}-prepared"
    try:
        read_manifest(str(prepared))
    except Exception:  # noqa: BLE001 - not prepared yet
        prepare("image-folder", str(folder), str(prepared), progress=False)
    return folder, str(prepared)


class TwoViews:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return [self.transform(image), self.transform(image)]


def dataloader_images_per_s(folder: Path, size: int, workers: int, epochs: int) -> float:
    import torchvision
    from torchvision.transforms import v2

    transform = v2.Compose([
        v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.PILToTensor(),  # uint8 (C, S, S), as raysl's views
    ])
    dataset = torchvision.datasets.ImageFolder(str(folder / "train"), transform=TwoViews(transform),
                                               loader=lambda path: torchvision.datasets.folder.pil_loader(path))
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                                         persistent_workers=True, prefetch_factor=4, drop_last=True,
                                         worker_init_fn=lambda _: torch.set_num_threads(1))
    delivered, started = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:
            started, delivered = time.perf_counter(), 0
        for views, _ in loader:
            delivered += len(views[0])
    return delivered / (time.perf_counter() - started)


def ray_images_per_s(data_uri: str, size: int, workers: int, epochs: int) -> float:
    from pipeline import ray_images_per_s as delivered_per_s  # benchmarks/pipeline.py: the same consumer

    from raysl.config import RunConfig

    run = RunConfig.model_validate({
        "data": {"path": data_uri}, "batch_size": BATCH,
        "views": {"crops": [{"count": 2, "size": size, "scale": [0.2, 1.0]}]},
        "resources": {"data_actors": workers, "data_cpus": 1},
    })
    return delivered_per_s(run, data_uri, epochs, BATCH)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs (after one warm-up epoch)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import ray

    folder, data_uri = make_data(args.images)
    rows = []
    for workers in args.workers:
        loader = dataloader_images_per_s(folder, args.size, workers, args.epochs)
        ray.init(num_cpus=workers + 1, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
        ours = ray_images_per_s(data_uri, args.size, workers, args.epochs)
        ray.shutdown()
        rows.append((workers, ours, loader))
        print(f"  workers {workers}: raysl {ours:,.0f}, DataLoader {loader:,.0f} source images/s", flush=True)
    print(f"\nsource images/s, {args.images} JPEG/PNG images of 100-500 px, 2 views of {args.size} px each, "
          f"batches of {BATCH}, {args.epochs} timed epoch(s), {os.cpu_count()} cores")
    print(f"{'workers':>7s} {'raysl (Ray Data)':>17s} {'per worker':>11s} {'DataLoader':>11s} {'per worker':>11s} {'ratio':>6s}")
    for workers, ours, loader in rows:
        print(f"{workers:7d} {ours:17,.0f} {ours / workers:11,.0f} {loader:11,.0f} {loader / workers:11,.0f} {ours / loader:5.2f}x")
    print("reference: FFCV's published ~326 images/s per vCPU (one view, JPEG q90 at 512 px, RRC 224 + flip)")


if __name__ == "__main__":
    main()
