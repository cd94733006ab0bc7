"""What every source reader returns (SplitData, SourceData) and the pixel conversions they share:
PIL/numpy to uint8, RGB, resizing, the one-size check.

Imports raysl.errors and raysl.io.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from tqdm import tqdm

from raysl.io.storage import join_uri

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]


MNIST_CLASSES = [str(digit) for digit in range(10)]
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | SIXTEEN_BIT_MODES


@dataclass
class SplitData:
    """One split in memory: images uint8 (N, H, W, C) and label columns (name -> int64 (N,), always "label")."""

    images: np.ndarray
    labels: dict[str, np.ndarray]


@dataclass
class SourceData:
    """What a reader returns: the splits, the class names of each label column, and conversion bookkeeping."""

    splits: dict[str, SplitData]
    label_sets: dict[str, list[str]]
    converted: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    split_folders: dict | None = None  # image folders: which source folders became the splits
    notes: list[str] = field(default_factory=list)


def to_uint8(image: Image.Image) -> np.ndarray:
    """Pixels as uint8 (H, W) for grayscale modes and grey palettes, else (H, W, 3); alpha is dropped."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _scale_to_uint8(np.asarray(image), maximum=65535)
    if mode == "I":
        values = np.asarray(image)  # 16-bit PNG/TIFF data when within 0..65535
        if values.min() >= 0 and values.max() <= 65535:
            return _scale_to_uint8(values, maximum=65535)
        return _normalise(values)
    if mode == "F":
        values = np.asarray(image)
        return _scale_to_uint8(values, maximum=1.0) if values.min() >= 0 and values.max() <= 1 else _normalise(values)
    if mode in GRAYSCALE_MODES:
        return np.asarray(image.convert("L"))
    if mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGBA"))[..., :3]
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return np.ascontiguousarray(rgb[..., 0]) if grey else np.ascontiguousarray(rgb)
    return np.asarray(image.convert("RGB"))


def _scale_to_uint8(values: np.ndarray, maximum: float) -> np.ndarray:
    return np.rint(values.astype(np.float64) * (255.0 / maximum)).clip(0, 255).astype(np.uint8)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to 0..255 (for int/float images whose range is not a known bit depth)."""
    values = np.nan_to_num(values.astype(np.float64))
    low, high = values.min(), values.max()
    return np.zeros(values.shape, np.uint8) if high == low else _scale_to_uint8(values - low, maximum=high - low)


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[..., np.newaxis], 3, axis=2) if pixels.ndim == 2 else pixels


def user_path(source: str, root: str, path: str) -> str:
    """A file path as the user wrote the root (keeps the URI scheme)."""
    return join_uri(source, path[len(root):].lstrip("/"))


def resize_all(images: np.ndarray, image_size: int, *, workers: int | None, progress: bool) -> np.ndarray:
    """Resize (N, H, W, C) uint8 images to (N, image_size, image_size, C), antialiased bilinear."""
    channels = images.shape[3]

    def resize_one(image: np.ndarray) -> np.ndarray:
        pil_image = Image.fromarray(image[..., 0] if channels == 1 else image)
        return np.asarray(pil_image.resize((image_size, image_size), Image.Resampling.BILINEAR)).reshape(
            image_size, image_size, channels)

    resized = map_in_threads(resize_one, images, workers=workers, progress=progress, description="resizing")
    return np.stack(resized) if resized else np.empty((0, image_size, image_size, channels), np.uint8)


def map_in_threads(
    function: Callable, items: Iterable, *, workers: int | None, progress: bool, description: str,
) -> list:
    """`[function(item) for item in items]` on a thread pool (PIL releases the GIL while decoding and resizing)."""
    items = list(items) if not isinstance(items, np.ndarray) else items
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as executor:
        return list(tqdm(executor.map(function, items), total=len(items), desc=description, unit="img",
                         disable=not progress))


def refuse_skipped(source: str, skipped: list[dict[str, str]], *, kept: int, strict: bool,
                   written: str = "nothing was written") -> None:
    """The errors every reader raises on files it could not use (each {"path", "reason"}, by path): none kept
    at all, or any skipped under --strict (the first 50 listed)."""
    from raysl.errors import UserError

    if not kept:
        raise UserError(f"no decodable images under {source}: all {len(skipped)} image files failed, e.g. "
                        + "; ".join(f"{entry['path']}: {entry['reason']}" for entry in skipped[:5]))
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) under {source} could not be used; {written}. "
                        "Fix or remove them, or rerun without --strict to skip them:\n"
                        + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in skipped[:50]))
