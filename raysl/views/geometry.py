"""Where a view's crop lies on the ORIGINAL image: torchvision's RandomResizedCrop meaning (`scale` the area
fraction, `ratio` the aspect, log-uniform, 10 attempts then a centre crop with the ratio clamped), drawn for a
whole batch from one generator; and the largest JPEG DCT reduction that still leaves every crop downsampled.

Random draw order, one batch (the same on every path, so one generator state gives the same views): for each
crop spec in order, for each of its `count` views: the crop boxes of all N images (N x 10 areas, N x 10
log-ratios, N x 2 positions), then N flips; after all the geometry, `photometric` for each view in the same order.

Imports raysl.config only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from raysl.config import CropSpec

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None



REDUCTIONS = (8, 4, 2, 1)


"""JPEG DCT-domain reductions, largest first (PIL's draft offers these; libjpeg-turbo more)."""


ATTEMPTS = 10


"""torchvision RandomResizedCrop.get_params' tries before the centre-crop fallback."""


Box = tuple[float, float, float, float]


def crop_boxes(width: int, height: int, spec: CropSpec, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random resized crops of one width x height image: float (count, 4) (left, top, crop_w, crop_h)
    in original pixels (integer-valued), torchvision RandomResizedCrop.get_params semantics."""
    return crop_boxes_batch([width] * count, [height] * count, spec, generator)


def crop_boxes_batch(
    widths: Sequence[int] | torch.Tensor, heights: Sequence[int] | torch.Tensor, spec: CropSpec,
    generator: torch.Generator,
) -> torch.Tensor:
    """One random resized crop per image (sizes widths[i] x heights[i]): float (N, 4) (left, top, w, h).

    torchvision's get_params, vectorised: 10 attempts of area = uniform(scale) * W * H and a log-uniform ratio,
    w = round(sqrt(area * ratio)), h = round(sqrt(area / ratio)); the first attempt with 0 < w <= W and
    0 < h <= H wins, placed uniformly (top in [0, H - h], left in [0, W - w]); else a centre crop of the whole
    image, its ratio clamped to spec.ratio. Draws a fixed N x 22 numbers whatever fits."""
    width = torch.as_tensor(widths, dtype=torch.float64).reshape(-1)
    height = torch.as_tensor(heights, dtype=torch.float64).reshape(-1)
    n = width.shape[0]
    low, high = spec.scale
    log_low, log_high = math.log(spec.ratio[0]), math.log(spec.ratio[1])
    area = (torch.rand(n, ATTEMPTS, generator=generator).double() * (high - low) + low) * (width * height)[:, None]
    ratio = torch.exp(torch.rand(n, ATTEMPTS, generator=generator).double() * (log_high - log_low) + log_low)
    position = torch.rand(n, 2, generator=generator).double()
    w = torch.round(torch.sqrt(area * ratio))  # round half to even, like Python's round
    h = torch.round(torch.sqrt(area / ratio))
    fits = (w > 0) & (w <= width[:, None]) & (h > 0) & (h <= height[:, None])
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first attempt that fits (0 if none)
    found = fits.any(dim=1)
    crop_w, crop_h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    top = torch.minimum(torch.floor(position[:, 0] * (height - crop_h + 1)), height - crop_h)
    left = torch.minimum(torch.floor(position[:, 1] * (width - crop_w + 1)), width - crop_w)
    # The fallback: the whole image, cut to the nearest allowed ratio, centred.
    in_ratio = width / height
    fb_w = torch.where(in_ratio > spec.ratio[1], torch.round(height * spec.ratio[1]), width)
    fb_h = torch.where(in_ratio < spec.ratio[0], torch.round(width / spec.ratio[0]), height)
    fb_w, fb_h = fb_w.clamp(1, None).minimum(width), fb_h.clamp(1, None).minimum(height)
    fb_top, fb_left = torch.div(height - fb_h, 2, rounding_mode="floor"), torch.div(width - fb_w, 2, rounding_mode="floor")
    boxes = torch.stack((
        torch.where(found, left, fb_left), torch.where(found, top, fb_top),
        torch.where(found, crop_w, fb_w), torch.where(found, crop_h, fb_h),
    ), dim=1)
    return boxes.float()


def reduction_for(boxes: torch.Tensor, sizes: torch.Tensor, max_reduction: int = 8) -> torch.Tensor:
    """Per image, the largest JPEG reduction k in (1, 2, 4, 8) (<= max_reduction) that keeps every crop of it
    at least its output size a side: k <= min over its crops of min(crop_w, crop_h) / size. boxes (N, V, 4),
    sizes (V,) output sides; int64 (N,)."""
    factor = (boxes[..., 2:].amin(dim=-1) / sizes.to(boxes.dtype)).amin(dim=-1)  # (N,) least downscale
    k = torch.ones_like(factor, dtype=torch.int64)
    for r in sorted(REDUCTIONS):
        if r <= max_reduction:
            k = torch.where(factor >= r, torch.full_like(k, r), k)
    return k


def integer_box(box: Sequence[float], scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A box (left, top, w, h) in original pixels mapped to a decoded image (scale = decoded / original pixels,
    size width x height) and rounded to whole pixels: (x0, y0, x1, y1), non-empty, inside the image."""
    left, top, crop_w, crop_h = (float(v) * scale for v in box)
    x0, y0 = min(max(round(left), 0), width - 1), min(max(round(top), 0), height - 1)
    x1, y1 = max(min(round(left + crop_w), width), x0 + 1), max(min(round(top + crop_h), height), y0 + 1)
    return x0, y0, x1, y1
