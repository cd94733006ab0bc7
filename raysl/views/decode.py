"""Image bytes (JPEG / PNG / WebP, any size, RGB or L) to pixels: simplejpeg (a wheel bundling libjpeg-turbo;
benchmarks/decoders.py) for JPEGs when installed, at a DCT-domain reduction (1/2, 1/4, 1/8), else PIL; the
format sniffing and header sizes prepare and the readers use.

Imports nothing of raysl.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None
from raysl.views.geometry import REDUCTIONS, Box

JPEG_MAGIC = b"\xff\xd8\xff"
BACKEND = "simplejpeg" if simplejpeg is not None else "pil"


"""The JPEG decoder used by default: simplejpeg when installed, else PIL."""


def as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data) if not isinstance(data, bytes) else data
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        return data.tobytes()
    raise TypeError(f"expected encoded image bytes, got {type(data).__name__}")


def is_jpeg(data: bytes) -> bool:
    return data[:3] == JPEG_MAGIC


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the header only (as stored: no EXIF rotation)."""
    if simplejpeg is not None and is_jpeg(data):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            return int(width), int(height)
        except ValueError:
            pass
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def target_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def _pil_to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bits, not clip
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray((values * (255.0 / top)).round().clip(0, 255).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


def decode_pil(data: bytes, channels: int, k: int) -> tuple[Image.Image, float]:
    mode = target_mode(channels)
    image = Image.open(io.BytesIO(data))
    width = image.width
    if image.format == "JPEG":  # libjpeg decodes straight to gray for L, and at 1/k: W // (W // k) in [k, 2k)
        image.draft(mode, (width // k, image.height // k) if k > 1 else None)
    image.load()
    scale = 1.0 / _reduction_from(width, image.width, k)
    return _pil_to_mode(image, mode), scale


def _reduction_from(original: int, decoded: int, asked: int = 1) -> int:
    """The reduction k that decoded `original` pixels to `decoded` (ceil(original / k)), `asked` if it fits."""
    for k in (asked, *sorted(REDUCTIONS)):
        if -(-original // k) == decoded:
            return k
    raise ValueError(f"{original} pixels decoded to {decoded}: no reduction in {REDUCTIONS} does that")


def _decode_simplejpeg(data: bytes, channels: int, k: int) -> tuple[np.ndarray, float]:
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    # min_factor k excludes every larger output, the min sizes every smaller one: exactly 1/k.
    array = simplejpeg.decode_jpeg(
        data, "GRAY" if channels == 1 else "RGB", min_factor=k, min_height=-(-height // k), min_width=-(-width // k),
    )
    return array, 1.0 / _reduction_from(width, array.shape[1], k)


JPEG_DECODERS: dict[str, Callable[[bytes, int, int], tuple]] = {"pil": decode_pil}


"""JPEG decoders by name: fn(data, channels, k) -> (PIL image or uint8 (H, W, C) array, scale) at 1/k."""


if simplejpeg is not None:
    JPEG_DECODERS["simplejpeg"] = _decode_simplejpeg


def decode_reduced(data: bytes, channels: int, k: int = 1, backend: str | None = None) -> tuple:
    if is_jpeg(data):
        name = backend or BACKEND
        if name != "pil":
            try:
                return JPEG_DECODERS[name](data, channels, k)
            except ValueError:  # simplejpeg refuses some (CMYK, damaged): PIL's turn
                pass
    target_mode(channels)
    return decode_pil(data, channels, k)


def decode(
    data: bytes, channels: int, reduce_to: tuple[int, int] | None = None, *, backend: str | None = None,
) -> tuple[Image.Image | np.ndarray, float]:
    """Decode to mode L (channels 1) or RGB (3): (PIL image or uint8 array (H, W, C), scale).

    reduce_to=(min_width, min_height): a JPEG may be decoded reduced by 1/2, 1/4 or 1/8 in the DCT domain, the
    largest reduction that keeps the output at least that size; `scale` is decoded pixels per original pixel
    (1, 1/2, 1/4, 1/8): original coordinate x maps to x * scale. Other formats decode whole (scale 1).
    backend: the JPEG decoder ("simplejpeg", "pil"; default BACKEND)."""
    data = as_bytes(data)
    k = 1
    if reduce_to is not None and is_jpeg(data):
        width, height = image_size(data)
        min_width, min_height = reduce_to
        k = next(r for r in REDUCTIONS if r == 1 or (-(-width // r) >= min_width and -(-height // r) >= min_height))
    return decode_reduced(data, channels, k, backend)


def to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image
    array = np.ascontiguousarray(image)
    return Image.fromarray(array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def crop_resize(image: Image.Image | np.ndarray, box: Box, size: int) -> np.ndarray:
    """The (left, top, w, h) box (fractional pixels allowed) of a decoded image resized to size x size with
    PIL's antialiased bilinear (torchvision's resize of a PIL image); uint8 (size, size, C). The evaluation
    crop; views use the faster `resize_crop_tensor` (torch, whole-pixel boxes)."""
    left, top, width, height = box
    out = to_pil(image).resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + width, top + height))
    array = np.asarray(out)
    return array[..., None] if array.ndim == 2 else array


def as_tensor(image: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 (1, C, H, W) over the image's (H, W, C) pixels (channels-last memory, no copy for a writable
    array): what F.interpolate's fast uint8 antialiased path takes."""
    array = np.array(image) if isinstance(image, Image.Image) else image
    if not array.flags.writeable:
        array = array.copy()
    if array.ndim == 2:
        array = array[..., None]
    return torch.from_numpy(array).permute(2, 0, 1)[None]


def decode_array(data: bytes, channels: int) -> np.ndarray:
    """One stored file (upright, RGB or L) as uint8 (H, W, channels), full size."""
    image, _ = decode(data, channels)
    pixels = np.array(image) if isinstance(image, Image.Image) else np.asarray(image)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)
