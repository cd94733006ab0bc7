"""Views of *encoded* images, taken from the ORIGINAL image: per batch, every view's geometry is drawn first
(raysl.views.geometry), then each image is decoded once at the largest reduction that leaves every crop
downsampled, each crop rounded to whole pixels of the decoded image and resized (bilinear, antialiased,
uint8), then each view's batch goes through the photometric ops of raysl.views.batch. `views_from_arrays`
does the same for decoded images; `views_of_rows` picks by what the rows hold.

Imports raysl.config and raysl.views' geometry, decode and batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raysl.config import CropSpec, ViewsConfig
from raysl.views.batch import bernoulli, photometric, photometric_uint8, to_uint8

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None
from raysl.views.decode import as_bytes, as_tensor, decode_array, decode_reduced, image_size, target_mode
from raysl.views.geometry import crop_boxes_batch, integer_box, reduction_for


def resize_crop_tensor(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop (x0, y0, x1, y1) of a (1, C, H, W) image resized to (1, C, size, size): bilinear, antialiased
    (F.interpolate: uint8 in, uint8 out on the CPU, where it runs 1.2-4x faster than PIL's resize (RGB the
    most); float elsewhere)."""
    x0, y0, x1, y1 = box
    crop = image[:, :, y0:y1, x0:x1]
    if crop.dtype == torch.uint8 and crop.device.type != "cpu":
        crop = crop.float()
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class Geometry:
    """Every view's crop boxes and flips for one batch, drawn in the documented order."""

    def __init__(self, widths: Sequence[int], heights: Sequence[int], views: ViewsConfig, generator: torch.Generator):
        self.specs: list[CropSpec] = []
        boxes, flips = [], []
        n = len(widths)
        for spec in views.crops:
            for _ in range(spec.count):
                self.specs.append(spec)
                boxes.append(crop_boxes_batch(widths, heights, spec, generator))
                flips.append(bernoulli(n, views.flip, generator))
        self.boxes = torch.stack(boxes, dim=1) if boxes else torch.zeros(n, 0, 4)  # (N, V, 4)
        self.flips = torch.stack(flips, dim=1)  # (N, V) bool
        self.sizes = torch.tensor([spec.size for spec in self.specs])


def finish(batches: list[torch.Tensor], geometry: Geometry, views: ViewsConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """uint8 (N, C, S, S) crops per view -> flip, photometric, uint8; in view order."""
    out = []
    for index, batch in enumerate(batches):
        rows = geometry.flips[:, index].nonzero().squeeze(1).to(batch.device)
        if rows.numel():  # flipped in place, the flipped rows only (a torch.where copied the whole batch twice)
            batch[rows] = batch[rows].flip(-1)
        if batch.dtype == torch.uint8:  # the CPU path: chunk by chunk through the cache
            out.append(photometric_uint8(batch, views, generator))
        else:
            out.append(to_uint8(photometric(batch.div_(255), views, generator)))
    return out


def _crops(
    count: int, sizes: tuple[list[int], list[int]], channels: int, load: Callable[[int, int], tuple],
    views: ViewsConfig, generator: torch.Generator, reduce: bool, workers: int,
) -> tuple[list[torch.Tensor], Geometry]:
    """The shared CPU path: geometry for all, then per image load(row, k) -> (decoded image, scale) once and
    each of its crops resized into the view batches: (uint8 (N, C, S, S) per view, unflipped; the geometry)."""
    geometry = Geometry(*sizes, views, generator)
    reduction = reduction_for(geometry.boxes, geometry.sizes) if reduce and count else torch.ones(count, dtype=torch.int64)
    out = [torch.empty((count, channels, spec.size, spec.size), dtype=torch.uint8) for spec in geometry.specs]
    boxes = geometry.boxes.tolist()

    def one(row: int) -> None:
        image, scale = load(row, int(reduction[row]))
        pixels = as_tensor(image)
        if pixels.shape[1] != channels:
            raise ValueError(f"image {row} has {pixels.shape[1]} channels, expected {channels}")
        height, width = pixels.shape[2:]
        for index, spec in enumerate(geometry.specs):
            box = integer_box(boxes[row][index], scale, width, height)
            out[index][row] = resize_crop_tensor(pixels, box, spec.size)[0]  # NCHW out: a plain copy

    if workers > 1 and count > 1:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(count)))
    else:
        for row in range(count):
            one(row)
    return out, geometry


def views_from_encoded(
    column: Sequence[bytes] | np.ndarray, views: ViewsConfig, generator: torch.Generator, channels: int, *,
    sizes: Sequence[tuple[int, int]] | None = None, reduce: bool = True, backend: str | None = None,
    workers: int = 1,
) -> list[torch.Tensor]:
    """All views of a batch of encoded images: a list of uint8 (N, channels, size, size), crop specs in order,
    `count` each (make_views' order). Each image is decoded once (reduced in the DCT domain when every crop
    of it allows; reduce=False: never); sizes: the images' (width, height) when known (else read from the
    headers); workers > 1 decodes and crops in a thread pool (the same output)."""
    crops, geometry = crops_from_encoded(
        column, views, generator, channels, sizes=sizes, reduce=reduce, backend=backend, workers=workers,
    )
    return finish(crops, geometry, views, generator)


def crops_from_encoded(
    column: Sequence[bytes] | np.ndarray, views: ViewsConfig, generator: torch.Generator, channels: int, *,
    sizes: Sequence[tuple[int, int]] | None = None, reduce: bool = True, backend: str | None = None,
    workers: int = 1,
) -> tuple[list[torch.Tensor], Geometry]:
    """views_from_encoded's decode and crop step alone: (uint8 (N, C, S, S) crops per view before flip and
    photometric, the geometry drawn)."""
    blobs = [as_bytes(data) for data in column]
    target_mode(channels)
    known = list(sizes) if sizes is not None else [image_size(data) for data in blobs]
    if len(known) != len(blobs):
        raise ValueError(f"{len(known)} sizes for {len(blobs)} images")
    widths, heights = [int(w) for w, _ in known], [int(h) for _, h in known]

    def load(row: int, k: int):
        image, scale = decode_reduced(blobs[row], channels, k, backend)
        decoded = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
        expected = (-(-widths[row] // round(1 / scale)), -(-heights[row] // round(1 / scale)))
        if decoded != expected:
            raise ValueError(f"image {row} decodes to {decoded}, expected {expected} (its size {known[row]} at scale {scale})")
        return image, scale

    return _crops(len(blobs), (widths, heights), channels, load, views, generator, reduce, workers)


def views_from_arrays(
    images: Sequence[np.ndarray], views: ViewsConfig, generator: torch.Generator, *, workers: int = 1,
) -> list[torch.Tensor]:
    """views_from_encoded for already-decoded variable-size uint8 images (H_i, W_i, C), C the same for all
    (1 or 3): the same geometry, crops and photometric ops, the same draws for the same sizes."""
    arrays = [np.asarray(image) for image in images]
    if not arrays:
        raise ValueError("no images")
    channels = {1 if a.ndim == 2 else a.shape[2] for a in arrays}
    if len(channels) != 1 or any(a.dtype != np.uint8 for a in arrays):
        raise ValueError(f"expected uint8 (H, W, C) images with one channel count, got channels {sorted(channels)}")
    (channel_count,) = channels
    target_mode(channel_count)
    widths, heights = [a.shape[1] for a in arrays], [a.shape[0] for a in arrays]
    crops, geometry = _crops(
        len(arrays), (widths, heights), channel_count, lambda row, k: (arrays[row], 1.0), views, generator, False, workers,
    )
    return finish(crops, geometry, views, generator)


def views_of_rows(rows: Sequence[bytes | np.ndarray], views: ViewsConfig, generator: torch.Generator, channels: int) -> list[torch.Tensor]:
    """Views of a batch whose rows are stored files (bytes) or decoded images (uint8 (H, W, C): a fixed-shape
    pool dataset's, or corrupted ones): views_from_encoded when all are files, else every file decoded in full
    and views_from_arrays."""
    if all(isinstance(row, (bytes, bytearray)) for row in rows):
        return views_from_encoded(rows, views, generator, channels)
    arrays = [row if isinstance(row, np.ndarray) else decode_array(row, channels) for row in rows]
    return views_from_arrays(arrays, views, generator)
