"""The standard evaluation transform the kNN monitor, the probe and `raysl embed` see: the short side resized
to size / crop_fraction (ImageNet's 256 -> 224 at 0.875), then a centre crop.

Imports raysl.views.decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None
from raysl.views.decode import as_bytes, crop_resize, decode_reduced, image_size, target_mode, to_pil
from raysl.views.geometry import REDUCTIONS, Box


def eval_box(width: int, height: int, size: int, crop_fraction: float = 0.875) -> Box:
    """The box (left, top, w, h) of the original image that torchvision's Resize(round(size / crop_fraction))
    then CenterCrop(size) keeps, in original pixels (fractional)."""
    resize = round(size / crop_fraction)
    if width <= height:
        new_w, new_h = resize, int(resize * height / width)
    else:
        new_w, new_h = int(resize * width / height), resize
    if new_w < size or new_h < size:
        raise ValueError(f"size {size} does not fit a {width}x{height} image resized to {new_w}x{new_h}")
    crop_top, crop_left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    scale_x, scale_y = width / new_w, height / new_h
    return crop_left * scale_x, crop_top * scale_y, size * scale_x, size * scale_y


def eval_image(
    data: bytes | np.ndarray, size: int, channels: int, crop_fraction: float = 0.875, *, backend: str | None = None,
) -> np.ndarray:
    """The evaluation transform: short side resized to round(size / crop_fraction) (bilinear, antialiased),
    centre crop size x size (ImageNet's 256 -> 224); uint8 (size, size, channels). Bytes are decoded (a JPEG
    reduced in the DCT domain while its short side stays >= the resized one, i.e. when >= 2x larger); an
    array (H, W, C) uint8 is used as is (converted to `channels`)."""
    mode = target_mode(channels)
    resize = round(size / crop_fraction)
    if isinstance(data, np.ndarray) and not (data.dtype == np.uint8 and data.ndim == 1):
        image, scale = to_pil(data), 1.0
        width, height = image.size
        image = image if image.mode == mode else image.convert(mode)
    else:
        blob = as_bytes(data)
        width, height = image_size(blob)
        short = min(width, height)
        k = next(r for r in REDUCTIONS if r * resize <= short or r == 1)
        image, scale = decode_reduced(blob, channels, k, backend)
    left, top, crop_w, crop_h = eval_box(width, height, size, crop_fraction)
    return crop_resize(image, (left * scale, top * scale, crop_w * scale, crop_h * scale), size)


def eval_images(
    column: Sequence[bytes | np.ndarray] | np.ndarray, size: int, channels: int, crop_fraction: float = 0.875, *,
    workers: int = 1,
) -> np.ndarray:
    """eval_image of every row: uint8 (N, size, size, channels); workers > 1: a thread pool (PIL and
    simplejpeg release the GIL while decoding and resizing)."""
    def one(data) -> np.ndarray:
        return eval_image(data, size, channels, crop_fraction)

    rows = list(column)
    out = np.empty((len(rows), size, size, channels), np.uint8)
    if workers > 1 and len(rows) > 1:
        with ThreadPoolExecutor(workers) as pool:
            for row, image in enumerate(pool.map(one, rows)):
                out[row] = image
    else:
        for row, data in enumerate(rows):
            out[row] = one(data)
    return out
