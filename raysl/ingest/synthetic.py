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

`--imagenet` writes ImageNet-1k's shape instead, fast enough for the whole of it on 2 cores (minutes): 1,000
class folders named by WordNet id (ImageNet-100's 100 among them), 1,281,167 train images (1,300 a class, about a
tenth fewer, down to 732; ImageNet-100's classes 126,689) and 50 val images a class, every file one of a few
distinct small JPEGs rendered per class (long side 64-160 px: a few GB in all). `--train-images N` or `--fraction F`
scales it down, same shape:

    python -m raysl.ingest.synthetic OUT --imagenet [--train-images 100000] [--classes 1000] [--pool-per-class 4]
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import time
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


def encode(image: Image.Image, orientation: int, rng: np.random.Generator, png: float = 0.12) -> tuple[bytes, str]:
    """(file bytes, extension): a `png` fraction PNG (12%), 8% grayscale JPEG, the rest JPEG q60-95; EXIF
    orientation on JPEGs."""
    kind = rng.random()
    buffer = io.BytesIO()
    if kind < png:
        image.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue(), ".png"
    if kind < png + 0.08:
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


# ---------------------------------------------------------------------------------- ImageNet-1k's shape

IMAGENET_TRAIN = 1_281_167  # ILSVRC-2012's train images, 1,000 classes of 732-1,300
IMAGENET100_TRAIN = 126_689  # of them, in the 100 classes of raysl/classlists/imagenet100.txt
IMAGENET_CLASSES, IMAGENET_VAL_PER_CLASS = 1000, 50
MOST_PER_CLASS, FEWEST_PER_CLASS = 1300, 732
SHORT_FRACTION = 0.1  # about a tenth of the classes have fewer than MOST_PER_CLASS images
MARKER = ".imagenet-synthetic.json"  # hidden: listing and prepare leave it out


def imagenet100_wnids() -> list[str]:
    from raysl.ingest.folder import SHIPPED_CLASS_LISTS, read_class_list

    return read_class_list(os.path.join(SHIPPED_CLASS_LISTS, "imagenet100.txt"))


def _short_counts(classes: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """`classes` train counts summing to `total`: most MOST_PER_CLASS, about a tenth (rng's choice) fewer, never
    below FEWEST_PER_CLASS."""
    room = MOST_PER_CLASS - FEWEST_PER_CLASS
    deficit = classes * MOST_PER_CLASS - total
    short = min(classes, max(1, round(classes * SHORT_FRACTION), -(-deficit // room)))
    weights = rng.uniform(0.1, 1.0, short)
    cut = np.minimum(np.floor(deficit * weights / weights.sum()).astype(np.int64), room)
    while cut.sum() < deficit:  # the rounding's rest, one image a class
        open_rows = np.flatnonzero(cut < room)[: deficit - cut.sum()]
        cut[open_rows] += 1
    counts = np.full(classes, MOST_PER_CLASS, np.int64)
    counts[rng.permutation(classes)[:short]] -= cut
    return counts


def imagenet_classes(seed: int = 0) -> dict[str, int]:
    """ImageNet-1k's classes, sorted: WordNet-id folder name -> train images. The 100 ids of ImageNet-100
    (126,689 images, as the real ones) and 900 made-up distinct `n0xxxxxxx` ids; 1,281,167 images in all."""
    subset = imagenet100_wnids()
    rng = np.random.default_rng([seed, IMAGENET_CLASSES])
    taken, others = set(subset), []
    while len(others) < IMAGENET_CLASSES - len(subset):
        name = f"n0{int(rng.integers(1_000_000, 5_000_000)):07d}"
        if name not in taken:
            taken.add(name)
            others.append(name)
    counts = dict(zip(subset, _short_counts(len(subset), IMAGENET100_TRAIN, rng).tolist()))
    counts.update(zip(others, _short_counts(len(others), IMAGENET_TRAIN - IMAGENET100_TRAIN, rng).tolist()))
    return dict(sorted(counts.items()))


def scaled(counts: np.ndarray, total: int) -> np.ndarray:
    """`counts` scaled to sum to exactly `total` (largest remainders), each at least 1 while `total` allows."""
    exact = counts * total / counts.sum()
    out = np.floor(exact).astype(np.int64)
    if total >= len(counts):
        out = np.maximum(out, 1)
    rest = total - int(out.sum())
    if rest > 0:
        out[np.argsort(out - exact, kind="stable")[:rest]] += 1
    elif rest < 0:
        out[np.argsort(-out, kind="stable")[:-rest]] -= 1
    return out


def imagenet_layout(train_images: int | None = None, classes: int = IMAGENET_CLASSES, val_per_class: int | None = None,
                    seed: int = 0) -> tuple[dict[str, int], int]:
    """({wnid: train images}, val images per class). Fewer `classes`: ImageNet-100's ids first, then the others in
    name order. `train_images` scales the per-class counts to that total (None: ImageNet's own); val defaults
    to 50 a class at ImageNet's size and in proportion below it (at least 1)."""
    full = imagenet_classes(seed)
    names = list(full)
    if classes < IMAGENET_CLASSES:
        subset = imagenet100_wnids()
        names = sorted((subset + [name for name in names if name not in set(subset)])[:classes])
    counts = np.array([full[name] for name in names], np.int64)
    fraction = 1.0
    if train_images is not None:
        fraction = train_images / counts.sum()
        counts = scaled(counts, train_images)
    if val_per_class is None:
        val_per_class = max(1, round(IMAGENET_VAL_PER_CLASS * min(fraction, 1.0)))
    return dict(zip(names, counts.tolist())), val_per_class


def render_pool(classes: int, per_class: int, *, min_side: int, max_side: int, seed: int,
                workers: int | None = None) -> list[list[bytes]]:
    """`per_class` distinct JPEGs (long side min_side..max_side, quality 60-95, 8% grayscale) for each of
    `classes` classes; class c's items are of item class c % 10, so the content still says the class."""
    items, labels, _ = load_items(classes * per_class, seed)
    by_label = [np.flatnonzero(labels == label) for label in range(10)]

    def render(number: int) -> bytes:
        position, variant = divmod(number, per_class)
        members = by_label[position % 10]
        item = items[members[(position // 10 * per_class + variant) % len(members)]]
        rng = np.random.default_rng([seed, number, 2])
        image, _ = make_image(item, int(rng.integers(1 << 62)), min_side, max_side)
        return encode(image, 1, rng, png=0.0)[0]

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as executor:
        flat = list(executor.map(render, range(classes * per_class)))
    return [flat[start : start + per_class] for start in range(0, len(flat), per_class)]


def make_imagenet(out: str | Path, *, train_images: int | None = None, classes: int = IMAGENET_CLASSES,
                  val_per_class: int | None = None, pool_per_class: int = 4, min_side: int = 64, max_side: int = 160,
                  seed: int = 0, workers: int | None = None) -> dict:
    """Write an ImageNet-shaped tree, OUT/train/<wnid>/<wnid>_<n>.JPEG and OUT/val/<wnid>/ILSVRC2012_val_<n>.JPEG,
    fast: `pool_per_class` JPEGs a class are rendered, and every file is one of its class's (val files the
    last of them, train files the others), written by threads. Returns (and saves as OUT/.imagenet-synthetic.json)
    what was made; an OUT holding that same tree is kept as it is, any other non-empty OUT refused."""
    out = Path(out)
    spec = {"train_images": train_images, "classes": classes, "val_per_class": val_per_class,
            "pool_per_class": pool_per_class, "min_side": min_side, "max_side": max_side, "seed": seed}
    if (out / MARKER).exists() and json.loads((out / MARKER).read_text())["spec"] == spec:
        return json.loads((out / MARKER).read_text())
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty (and holds no tree of these settings); pass an empty or new folder")
    started = time.perf_counter()
    counts, val = imagenet_layout(train_images, classes, val_per_class, seed)
    pool = render_pool(len(counts), pool_per_class, min_side=min_side, max_side=max_side, seed=seed, workers=workers)
    rendered = time.perf_counter()
    names = list(counts)

    def write_class(position: int) -> int:
        name, files = names[position], pool[position]
        train_files = files[:-1] or files
        written = 0
        for split, count in (("train", counts[name]), ("val", val)):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                if split == "train":
                    path, data = folder / f"{name}_{index + 1}.JPEG", train_files[index % len(train_files)]
                else:
                    path, data = folder / f"ILSVRC2012_val_{position * val + index + 1:08d}.JPEG", files[-1]
                with open(path, "wb") as handle:
                    handle.write(data)
                written += len(data)
        return written

    with ThreadPoolExecutor(max_workers=workers or min(16, 4 * (os.cpu_count() or 1))) as executor:
        written = sum(executor.map(write_class, range(len(names))))
    finished = time.perf_counter()
    sides = [Image.open(io.BytesIO(data)).size for files in pool for data in files]
    summary = {
        "spec": spec, "classes": len(names), "train": sum(counts.values()), "val": val * len(names),
        "imagenet100_train": sum(counts.get(name, 0) for name in imagenet100_wnids()),
        "bytes": written, "pool": len(pool) * pool_per_class, "long_sides": [min(map(max, sides)), max(map(max, sides))],
        "render_s": round(rendered - started, 1), "write_s": round(finished - rendered, 1),
    }
    (out / MARKER).write_text(json.dumps(summary))
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--min-side", type=int, help="default 100 (--imagenet: 64)")
    parser.add_argument("--max-side", type=int, help="default 500 (--imagenet: 160)")
    parser.add_argument("--seed", type=int, default=0)
    imagenet = parser.add_argument_group("--imagenet: ImageNet-1k's shape, fast")
    imagenet.add_argument("--imagenet", action="store_true", help="1,000 wnid class folders, 1,281,167 train + 50,000 val")
    imagenet.add_argument("--train-images", type=int, help="scale the train images to this total (same shape)")
    imagenet.add_argument("--fraction", type=float, help="or to this fraction of ImageNet's 1,281,167")
    imagenet.add_argument("--classes", type=int, default=IMAGENET_CLASSES, help="fewer classes (ImageNet-100's first)")
    imagenet.add_argument("--val-per-class", type=int, help="default 50, in proportion when scaled down")
    imagenet.add_argument("--pool-per-class", type=int, default=4, help="distinct JPEGs rendered per class")
    imagenet.add_argument("--workers", type=int, help="writing threads")
    args = parser.parse_args(argv)
    if args.imagenet:
        train_images = args.train_images
        if args.fraction is not None:
            train_images = round(args.fraction * IMAGENET_TRAIN)
        made = make_imagenet(args.out, train_images=train_images, classes=args.classes, val_per_class=args.val_per_class,
                             pool_per_class=args.pool_per_class, min_side=args.min_side or 64,
                             max_side=args.max_side or 160, seed=args.seed, workers=args.workers)
        seconds = made["render_s"] + made["write_s"]
        print(f"{made['classes']} classes, {made['train']:,} train + {made['val']:,} val images "
              f"({made['imagenet100_train']:,} train in ImageNet-100's classes), {made['bytes'] / 2**30:.2f} GiB from "
              f"{made['pool']:,} JPEGs of {made['long_sides'][0]}-{made['long_sides'][1]} px, under {args.out}: "
              f"rendered in {made['render_s']} s, written in {made['write_s']} s "
              f"({(made['train'] + made['val']) / max(seconds, 1e-9):,.0f} files/s)")
        return
    path = make_folder(args.out, args.train, args.val, min_side=args.min_side or 100, max_side=args.max_side or 500,
                       seed=args.seed)
    print(f"wrote {args.train} train + {args.val} val images under {path}")


if __name__ == "__main__":
    main()
