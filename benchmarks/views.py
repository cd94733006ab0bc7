"""Views: raysl's batched view maker against torchvision's per-sample transforms (v2) doing the same spec.

Prints images/s (source images, not views) side by side, on the same cores (one thread each unless
--threads), for 28 px grayscale and 32 px RGB with 2 views, and a LoGo multi-crop spec (2 global + 4 local):
    .venv/bin/python benchmarks/views.py [--images 2048] [--threads 1]
The spec: random resized crop + horizontal flip + colour jitter (brightness/contrast; saturation/hue on RGB)
+ grayscale (RGB) + Gaussian blur, each with the same probabilities and ranges on both sides. torchvision runs
per image on uint8 CHW tensors, as a Dataset's __getitem__ would; raysl on the whole batch (N, H, W, C).
"""

from __future__ import annotations

import argparse
import time

import torch
from torchvision.transforms import v2

from raysl.config import ViewsConfig
from raysl.views.batch import make_views

CASES = {
    "28px gray, 2 views": (1, 28, [{"count": 2, "size": 28, "scale": [0.2, 1.0]}]),
    "32px RGB, 2 views": (3, 32, [{"count": 2, "size": 32, "scale": [0.2, 1.0]}]),
    "32px RGB, LoGo 2 global + 4 local": (3, 32, [
        {"count": 2, "size": 32, "scale": [0.3, 1.0], "role": "global"},
        {"count": 4, "size": 16, "scale": [0.05, 0.3], "role": "local"},
    ]),
}


def views_config(crops: list[dict]) -> ViewsConfig:
    return ViewsConfig.model_validate({
        "crops": crops, "flip": 0.5, "grayscale": 0.2, "blur": {"prob": 0.5, "sigma": [0.1, 2.0]},
        "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1},
    })


def torchvision_pipelines(views: ViewsConfig, channels: int) -> list[v2.Compose]:
    """One per-sample pipeline per view, the same spec as `views`."""
    jitter = views.color_jitter
    pipelines = []
    for spec in views.crops:
        steps = [
            v2.RandomResizedCrop(spec.size, scale=tuple(spec.scale), ratio=tuple(spec.ratio), antialias=False),
            v2.RandomHorizontalFlip(views.flip),
            v2.RandomApply([v2.ColorJitter(
                jitter.brightness, jitter.contrast,
                jitter.saturation if channels == 3 else 0, jitter.hue if channels == 3 else 0,
            )], p=jitter.prob),
        ]
        if channels == 3:
            steps.append(v2.RandomGrayscale(views.grayscale))
        kernel = 2 * round(3 * views.blur.sigma[1]) + 1
        steps.append(v2.RandomApply([v2.GaussianBlur(min(kernel, spec.size - 1 | 1), sigma=tuple(views.blur.sigma))], p=views.blur.prob))
        pipelines += [v2.Compose(steps)] * spec.count
    return pipelines


def images_per_second(function, count: int, repeat: int = 3) -> float:
    function()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return count / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=1024, help="raysl's batch (the augmentation actor's)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"images/s (source images; {args.images} images, best of 3, {args.threads} thread(s), torch {torch.__version__})")
    print(f"{'case':36s} {'raysl batched':>14s} {'torchvision v2':>15s} {'ratio':>7s}")
    for name, (channels, size, crops) in CASES.items():
        views = views_config(crops)
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (args.images, size, size, channels), dtype=torch.uint8, generator=generator)
        pipelines = torchvision_pipelines(views, channels)
        chw = images.permute(0, 3, 1, 2).contiguous()

        def raysl_views():
            for start in range(0, args.images, args.batch_size):
                make_views(images[start : start + args.batch_size], views, generator)

        def torchvision_views():
            for image in chw:
                for pipeline in pipelines:
                    pipeline(image)

        ours = images_per_second(raysl_views, args.images)
        theirs = images_per_second(torchvision_views, args.images, repeat=1)
        print(f"{name:36s} {ours:14,.0f} {theirs:15,.0f} {ours / theirs:6.1f}x")


if __name__ == "__main__":
    main()
