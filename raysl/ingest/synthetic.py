"""A labeled folder of variable-size photos-like images, made here: the test fixture and benchmark data for the
encoded (variable-size) data path, since no natural-photo dataset installs on the development machines.

Each image is a random-size canvas (its long side `min_side`..`max_side` px, its aspect ratio 3:5 to 5:3, as
photos' are) with a smooth colour texture and fine noise, and one labeled item pasted at a random scale (its
side 50-90% of the canvas's short side) and place (its centre within the middle half of each side: object-
centric, as ImageNet's photos are), tinted with a random colour. Items are Fashion-MNIST train images when Debian's
`dataset-fashion-mnist` is installed (10 classes), else drawn glyphs (10 distinct shapes), so the folder is
learnable either way. Files: 80% JPEG (quality 60-95), 12% PNG, 8% grayscale JPEG; a few JPEGs carry an EXIF
orientation (the pixels stored rotated, as cameras do). ImageNet's layout: OUT/train/<class>/*.JPEG,
OUT/val/<class>/*.JPEG (PNGs as *.png).

    python -m raysl.ingest.synthetic OUT --train 2000 --val 500 [--min-side 100 --max-side 500 --seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
FASHION_MNIST_LABELS = "/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz"
CLASS_FOLDERS = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
GLYPH_FOLDERS = ["square", "disc", "ring", "cross", "bar_h", "bar_v", "triangle", "diamond", "corner", "dots"]


def _glyph(label: int, rng: np.random.Generator) -> np.ndarray:
    """A 28x28 uint8 shape per class, slightly jittered (the fallback items without Fashion-MNIST)."""
    y, x = np.mgrid[0:28, 0:28].astype(np.float32) + rng.uniform(-1.5, 1.5, 2)[:, None, None]
    cy = cx = 13.5
    r = np.hypot(y - cy, x - cx)
    shapes = [
        (abs(y - cy) < 9) & (abs(x - cx) < 9),
        r < 10,
        (r < 11) & (r > 6),
        (abs(y - cy) < 3) | (abs(x - cx) < 3),
        abs(y - cy) < 4,
        abs(x - cx) < 4,
        (y > 4) & (abs(x - cx) < (y - 4) * 0.45),
        abs(y - cy) + abs(x - cx) < 11,
        ((y < 9) | (x < 9)) & (y < 24) & (x < 24),
        (np.hypot((y % 9) - 4.5, (x % 9) - 4.5) < 3),
    ]
    return (shapes[label] * 230 + rng.integers(0, 25, (28, 28))).clip(0, 255).astype(np.uint8)


def load_items(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """`count` 28x28 items and their labels: Fashion-MNIST train images when installed, else glyphs."""
    rng = np.random.default_rng(seed)
    if os.path.exists(FASHION_MNIST) and os.path.exists(FASHION_MNIST_LABELS):
        with gzip.open(FASHION_MNIST) as handle:
            images = np.frombuffer(handle.read(), np.uint8, offset=16).reshape(-1, 28, 28)
        with gzip.open(FASHION_MNIST_LABELS) as handle:
            labels = np.frombuffer(handle.read(), np.uint8, offset=8).astype(np.int64)
        rows = rng.permutation(len(images))[:count] if count <= len(images) else rng.integers(0, len(images), count)
        return images[rows], labels[rows], CLASS_FOLDERS
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    return np.stack([_glyph(int(label), rng) for label in labels]), labels, GLYPH_FOLDERS


def _canvas(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth random texture around one colour (a coarse grid upsampled) plus fine noise, uint8 (H, W, 3)."""
    base = rng.integers(60, 196, 3)  # one hue per canvas, varied around it: a busy but photo-like background
    coarse = (base + rng.integers(-45, 46, (rng.integers(2, 7), rng.integers(2, 7), 3))).clip(0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    return (smooth + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)


def make_image(item: np.ndarray, seed: int, min_side: int, max_side: int) -> tuple[Image.Image, int]:
    """One canvas with `item` pasted (tinted, random place and scale); returns (image, EXIF orientation or 1)."""
    rng = np.random.default_rng(seed)
    long_side = int(rng.integers(min_side, max_side + 1))
    short_side = max(min(min_side, long_side), round(long_side * rng.uniform(0.6, 1.0)))
    height, width = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
    canvas = _canvas(height, width, rng).astype(np.float32)
    side = max(8, int(min(height, width) * rng.uniform(0.5, 0.9)))
    mask = np.asarray(Image.fromarray(item).resize((side, side), Image.Resampling.BILINEAR), np.float32)[..., None] / 255
    centre_y = rng.uniform(max(side / 2, height / 4), min(height - side / 2, 3 * height / 4))
    centre_x = rng.uniform(max(side / 2, width / 4), min(width - side / 2, 3 * width / 4))
    top, left = int(round(centre_y - side / 2)), int(round(centre_x - side / 2))
    top, left = min(max(top, 0), height - side), min(max(left, 0), width - side)
    tint = rng.uniform(0, 255, 3).astype(np.float32)
    if np.abs(tint - canvas[top:top + side, left:left + side].mean((0, 1))).sum() < 150:  # keep the item visible
        tint = 255 - tint
    patch = canvas[top:top + side, left:left + side]
    canvas[top:top + side, left:left + side] = patch * (1 - mask) + tint * mask
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    orientation = 1
    if rng.random() < 0.05:  # stored rotated with an EXIF orientation, as a phone camera writes it
        orientation = int(rng.choice([3, 6, 8]))
        image = image.transpose({3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
                                 8: Image.Transpose.ROTATE_270}[orientation])
    return image, orientation


def encode(image: Image.Image, orientation: int, rng: np.random.Generator) -> tuple[bytes, str]:
    """(file bytes, extension): 80% JPEG q60-95, 12% PNG, 8% grayscale JPEG; EXIF orientation on JPEGs."""
    kind = rng.random()
    buffer = io.BytesIO()
    if kind < 0.12:
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), ".png"
    if kind < 0.20:
        image = image.convert("L")
    exif = Image.Exif()
    if orientation != 1:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", quality=int(rng.integers(60, 96)), exif=exif.tobytes())
    return buffer.getvalue(), ".JPEG"


def make_folder(out: str | Path, train: int = 2000, val: int = 500, *, min_side: int = 100, max_side: int = 500,
                seed: int = 0, workers: int | None = None) -> Path:
    """Write the folder (ImageNet layout) and return its path. Deterministic for a seed."""
    out = Path(out)
    items, labels, folders = load_items(train + val, seed)
    splits = ["train"] * train + ["val"] * val
    for split in ("train", "val"):
        for folder in folders:
            (out / split / folder).mkdir(parents=True, exist_ok=True)

    def write(number: int) -> None:
        rng = np.random.default_rng([seed, number, 1])
        image, orientation = make_image(items[number], int(rng.integers(1 << 62)), min_side, max_side)
        data, extension = encode(image, orientation, rng)
        (out / splits[number] / folders[labels[number]] / f"img_{number:07d}{extension}").write_bytes(data)

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as executor:
        list(executor.map(write, range(train + val)))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--min-side", type=int, default=100)
    parser.add_argument("--max-side", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = make_folder(args.out, args.train, args.val, min_side=args.min_side, max_side=args.max_side, seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images under {path}")


if __name__ == "__main__":
    main()
