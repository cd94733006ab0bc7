"""Input pipeline: Ray Data (read Parquet -> views in augmentation actors -> iter_torch_batches) against a plain
PyTorch DataLoader making the same views with the same number of worker processes, images/s delivered to a
consumer that does nothing. Side by side, same cores, same prepared Fashion-MNIST:
    .venv/bin/python benchmarks/pipeline.py [--workers 1 2] [--epochs 2]
The DataLoader holds the train split in memory (decoded once, not timed) and makes the views of each batch
of 1024 in a worker (raysl's batched view maker, as in the Ray actors); the Ray side reads the Parquet shards
every epoch, in one Ray Data execution over all epochs as a Train worker consumes it. Both deliver batches of 128 (2 views each) and are timed over whole epochs after a warm-up one.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
AUGMENT_BATCH = 1024
BATCH = 128


class BatchViews(torch.utils.data.Dataset):
    """Item i: the views of the i-th batch of 1024 images of a fresh permutation per epoch."""

    def __init__(self, images: torch.Tensor, views):
        self.images, self.views = images, views
        self.order = torch.randperm(len(images))

    def __len__(self) -> int:
        return -(-len(self.images) // AUGMENT_BATCH)

    def __getitem__(self, index: int) -> list[torch.Tensor]:
        from raysl.views.batch import make_views

        torch.set_num_threads(1)
        rows = self.order[index * AUGMENT_BATCH : (index + 1) * AUGMENT_BATCH]
        return make_views(self.images[rows], self.views, torch.Generator().manual_seed(int(torch.randint(1 << 30, (1,)))))


def dataloader_images_per_s(images: torch.Tensor, views, workers: int, epochs: int) -> float:
    dataset = BatchViews(images, views)
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=True, num_workers=workers,
                                         persistent_workers=True, prefetch_factor=4)
    delivered, started = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:
            started, delivered = time.perf_counter(), 0
        for views in loader:
            for start in range(0, views[0].shape[0] - BATCH + 1, BATCH):  # the consumer's batches of 128
                delivered += len(views[0][start : start + BATCH])
    return delivered / (time.perf_counter() - started)


def ray_images_per_s(run, data_uri: str, epochs: int, batch_size: int = BATCH) -> float:
    """As a Train worker consumes it: one execution over every epoch (the warm-up one too), an epoch's
    batches at a time from one iterator (raysl.ray_glue.pipeline.epochs_per_execution). Also used by
    benchmarks/folder_pipeline.py."""
    from raysl.ray_glue.augment_actor import augment_batch
    from raysl.data.pretraining import plan_pretraining
    from raysl.ray_glue.pipeline import build_view_dataset, configure_data_context, shuffle_buffer

    configure_data_context(run)
    plan = plan_pretraining(run, data_uri)
    dataset = build_view_dataset(run, plan, epochs=epochs + 1)
    buffer = shuffle_buffer(batch_size, augment_batch(run.views, plan))
    batches = iter(dataset.iter_torch_batches(batch_size=batch_size, drop_last=True, prefetch_batches=2,
                                              local_shuffle_buffer_size=buffer))
    delivered, started = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:
            started, delivered = time.perf_counter(), 0
        for batch in itertools.islice(batches, plan.epoch_images // batch_size):
            delivered += len(batch["view_0"])
    return delivered / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)")
    args = parser.parse_args()

    import ray

    from raysl.ingest.resolve import resolve_data
    from raysl.config import load_sweep_config
    from raysl.ingest.dataset import load_split

    base = load_sweep_config(ROOT / "sweeps" / "quickstart.yaml").base
    data_uri = resolve_data(base)
    images = torch.from_numpy(load_split(data_uri, "train")[0])
    rows = []
    for workers in args.workers:
        loader = dataloader_images_per_s(images, base.views, workers, args.epochs)
        ray.init(num_cpus=workers, logging_level=logging.WARNING, log_to_driver=False, include_dashboard=False)
        run = base.model_copy(update={"resources": base.resources.model_copy(
            update={"data_actors": workers, "data_cpus": 0.5})})
        ours = ray_images_per_s(run, data_uri, args.epochs)
        ray.shutdown()
        rows.append((workers, ours, loader))
    print(f"images/s delivered (60k Fashion-MNIST images per epoch, 2 views, batches of {BATCH}, {args.epochs} timed epochs)")
    print(f"{'workers':>7s} {'Ray Data':>9s} {'DataLoader':>11s} {'ratio':>6s}")
    for workers, ours, loader in rows:
        print(f"{workers:7d} {ours:9,.0f} {loader:11,.0f} {ours / loader:5.2f}x")


if __name__ == "__main__":
    main()
