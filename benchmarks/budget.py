"""Where a quickstart epoch's time goes on this machine: views, training steps, the kNN monitor.

Prints figures side by side (one thread, as each quickstart trial gets):
    .venv/bin/python benchmarks/budget.py [--width 16] [--pool-size 2] [--batch-size 128]
Random uint8 images of Fashion-MNIST's shape; no Ray, so these are ceilings for the Ray pipeline.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from raysl.config import RunConfig
from raysl.views.batch import make_views
from raysl.training.loop import Trainer
from raysl.training.monitor import extract_features, knn_predict


def seconds(function, repeat: int) -> float:
    function()  # warm-up
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.batch_size, 28, 28, 1), dtype=torch.uint8, generator=generator)
    print(f"threads {args.threads}, small_cnn width {args.width}, pool {args.pool_size}, batch {args.batch_size}")

    for channels_last in (False, True):
        run = RunConfig.model_validate(
            {"model": {"width": args.width, "pool_size": args.pool_size}, "batch_size": args.batch_size,
             "channels_last": channels_last}
        )
        views = make_views(images, run.views, generator)
        trainer = Trainer(run, 1, [0.286], [0.353], steps_per_epoch=10**6)
        step = seconds(lambda: trainer.train_epoch([views]), 5)
        bank = torch.randint(0, 256, (4096, 28, 28, 1), dtype=torch.uint8, generator=generator)
        extract = seconds(lambda: extract_features(trainer.method.backbone, bank, trainer.mean, trainer.std, channels_last=channels_last), 2)
        print(f"  channels_last={channels_last!s:5}  train {args.batch_size / step:7.0f} images/s "
              f"({60000 / args.batch_size * step:5.1f} s per 60k epoch)   features {4096 / extract:7.0f} images/s "
              f"({70000 / 4096 * extract:5.1f} s for 60k bank + 10k queries)")

    view_time = seconds(lambda: make_views(images, run.views, generator), 10)
    print(f"  views (2 per image)   {args.batch_size / view_time:7.0f} images/s ({60000 / args.batch_size * view_time:5.1f} s per 60k epoch)")
    dim = trainer.method.backbone.out_dim
    bank_features = F.normalize(torch.randn(60000, dim, generator=generator), dim=1)
    queries = F.normalize(torch.randn(10000, dim, generator=generator), dim=1)
    labels = torch.randint(0, 10, (60000,), generator=generator)
    vote = seconds(lambda: knn_predict(queries, bank_features, labels, 10, 200, 0.1), 1)
    print(f"  kNN vote (10k queries x 60k bank, k=200, d={dim})  {vote:5.1f} s")


if __name__ == "__main__":
    main()
