"""Views and evaluation crops of *encoded* images (JPEG / PNG / WebP bytes of any size, mode RGB or L, already
upright), taken from the ORIGINAL image: pure numpy / PIL / torch / torchvision, no Ray.

A crop spec keeps torchvision's RandomResizedCrop meaning here (unlike `make_views`, which shrinks a crop that
does not fit): `scale` is the area fraction of the original image, `ratio` its aspect ratio (log-uniform), 10
attempts then a centre crop with the ratio clamped (`crop_boxes`), resized to `size` x `size` (bilinear,
antialiased), then the horizontal flip and the same photometric ops as `make_views` (`views.photometric`),
batched per view.

`views_from_encoded(column, views, generator, channels)`: per batch, the geometry of every view (crop boxes in
original pixels, flips) is drawn first, for all images, from `generator`; then each image is decoded once, at
the smallest JPEG DCT-domain reduction (1/2, 1/4, 1/8) that still leaves every one of its crops at least
`size` pixels a side (so each crop is still downsampled, never upsampled, by the final resize); each crop's
box is rounded to whole pixels of the decoded image and resized with F.interpolate (bilinear, antialiased,
uint8: faster than PIL's resize here); then each view's batch goes through `photometric`.
`views_from_arrays` does the same for already-decoded images (no reduction), `views_on_device` on a GPU with
nvjpeg, `eval_image` / `eval_images` the standard evaluation transform (short side to size / 0.875, centre
crop).

Random draw order, one batch (the same on every path, so the same generator state gives the same views):
for each crop spec in order, for each of its `count` views: the crop boxes of all N images (10 attempts each:
N x 10 areas, N x 10 log-ratios, N x 2 positions), then N flips; after all the geometry, `photometric` for
each view in the same order.

JPEG decoder: simplejpeg (a PyPI wheel bundling libjpeg-turbo; benchmarks/decoders.py) when installed, else
PIL; PNG, WebP and whatever simplejpeg refuses go through PIL.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from raysl.config import CropSpec, ViewsConfig
from raysl.data.views import _bernoulli, photometric, photometric_uint8, to_uint8

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None

JPEG_MAGIC = b"\xff\xd8\xff"
REDUCTIONS = (8, 4, 2, 1)
"""JPEG DCT-domain reductions, largest first (PIL's draft offers these; libjpeg-turbo more)."""
ATTEMPTS = 10
"""torchvision RandomResizedCrop.get_params' tries before the centre-crop fallback."""
BACKEND = "simplejpeg" if simplejpeg is not None else "pil"
"""The JPEG decoder used by default: simplejpeg when installed, else PIL."""

Box = tuple[float, float, float, float]


# ---------------------------------------------------------------------------------------------- crop geometry


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


# ---------------------------------------------------------------------------------------------- decoding


def _as_bytes(data) -> bytes:
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


def _target_mode(channels: int) -> str:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return "L" if channels == 1 else "RGB"


def _pil_to_mode(image: Image.Image, mode: str) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit gray: scale to 8 bits, not clip
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray((values * (255.0 / top)).round().clip(0, 255).astype(np.uint8))
    return image if image.mode == mode else image.convert(mode)


def _decode_pil(data: bytes, channels: int, k: int) -> tuple[Image.Image, float]:
    mode = _target_mode(channels)
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


JPEG_DECODERS: dict[str, Callable[[bytes, int, int], tuple]] = {"pil": _decode_pil}
"""JPEG decoders by name: fn(data, channels, k) -> (PIL image or uint8 (H, W, C) array, scale) at 1/k."""
if simplejpeg is not None:
    JPEG_DECODERS["simplejpeg"] = _decode_simplejpeg


def _decode_reduced(data: bytes, channels: int, k: int = 1, backend: str | None = None) -> tuple:
    if is_jpeg(data):
        name = backend or BACKEND
        if name != "pil":
            try:
                return JPEG_DECODERS[name](data, channels, k)
            except ValueError:  # simplejpeg refuses some (CMYK, damaged): PIL's turn
                pass
    _target_mode(channels)
    return _decode_pil(data, channels, k)


def decode(
    data: bytes, channels: int, reduce_to: tuple[int, int] | None = None, *, backend: str | None = None,
) -> tuple[Image.Image | np.ndarray, float]:
    """Decode to mode L (channels 1) or RGB (3): (PIL image or uint8 array (H, W, C), scale).

    reduce_to=(min_width, min_height): a JPEG may be decoded reduced by 1/2, 1/4 or 1/8 in the DCT domain, the
    largest reduction that keeps the output at least that size; `scale` is decoded pixels per original pixel
    (1, 1/2, 1/4, 1/8): original coordinate x maps to x * scale. Other formats decode whole (scale 1).
    backend: the JPEG decoder ("simplejpeg", "pil"; default BACKEND)."""
    data = _as_bytes(data)
    k = 1
    if reduce_to is not None and is_jpeg(data):
        width, height = image_size(data)
        min_width, min_height = reduce_to
        k = next(r for r in REDUCTIONS if r == 1 or (-(-width // r) >= min_width and -(-height // r) >= min_height))
    return _decode_reduced(data, channels, k, backend)


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


def integer_box(box: Sequence[float], scale: float, width: int, height: int) -> tuple[int, int, int, int]:
    """A box (left, top, w, h) in original pixels mapped to a decoded image (scale = decoded / original pixels,
    size width x height) and rounded to whole pixels: (x0, y0, x1, y1), non-empty, inside the image."""
    left, top, crop_w, crop_h = (float(v) * scale for v in box)
    x0, y0 = min(max(round(left), 0), width - 1), min(max(round(top), 0), height - 1)
    x1, y1 = max(min(round(left + crop_w), width), x0 + 1), max(min(round(top + crop_h), height), y0 + 1)
    return x0, y0, x1, y1


def resize_crop_tensor(image: torch.Tensor, box: tuple[int, int, int, int], size: int) -> torch.Tensor:
    """Crop (x0, y0, x1, y1) of a (1, C, H, W) image resized to (1, C, size, size): bilinear, antialiased
    (F.interpolate: uint8 in, uint8 out on the CPU, where it runs 1.2-4x faster than PIL's resize (RGB the
    most); float elsewhere)."""
    x0, y0, x1, y1 = box
    crop = image[:, :, y0:y1, x0:x1]
    if crop.dtype == torch.uint8 and crop.device.type != "cpu":
        crop = crop.float()
    return F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ---------------------------------------------------------------------------------------------- views


class _Geometry:
    """Every view's crop boxes and flips for one batch, drawn in the documented order."""

    def __init__(self, widths: Sequence[int], heights: Sequence[int], views: ViewsConfig, generator: torch.Generator):
        self.specs: list[CropSpec] = []
        boxes, flips = [], []
        n = len(widths)
        for spec in views.crops:
            for _ in range(spec.count):
                self.specs.append(spec)
                boxes.append(crop_boxes_batch(widths, heights, spec, generator))
                flips.append(_bernoulli(n, views.flip, generator))
        self.boxes = torch.stack(boxes, dim=1) if boxes else torch.zeros(n, 0, 4)  # (N, V, 4)
        self.flips = torch.stack(flips, dim=1)  # (N, V) bool
        self.sizes = torch.tensor([spec.size for spec in self.specs])


def _finish(batches: list[torch.Tensor], geometry: _Geometry, views: ViewsConfig, generator: torch.Generator) -> list[torch.Tensor]:
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
) -> tuple[list[torch.Tensor], _Geometry]:
    """The shared CPU path: geometry for all, then per image load(row, k) -> (decoded image, scale) once and
    each of its crops resized into the view batches: (uint8 (N, C, S, S) per view, unflipped; the geometry)."""
    geometry = _Geometry(*sizes, views, generator)
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
    return _finish(crops, geometry, views, generator)


def crops_from_encoded(
    column: Sequence[bytes] | np.ndarray, views: ViewsConfig, generator: torch.Generator, channels: int, *,
    sizes: Sequence[tuple[int, int]] | None = None, reduce: bool = True, backend: str | None = None,
    workers: int = 1,
) -> tuple[list[torch.Tensor], _Geometry]:
    """views_from_encoded's decode and crop step alone: (uint8 (N, C, S, S) crops per view before flip and
    photometric, the geometry drawn)."""
    blobs = [_as_bytes(data) for data in column]
    _target_mode(channels)
    known = list(sizes) if sizes is not None else [image_size(data) for data in blobs]
    if len(known) != len(blobs):
        raise ValueError(f"{len(known)} sizes for {len(blobs)} images")
    widths, heights = [int(w) for w, _ in known], [int(h) for _, h in known]

    def load(row: int, k: int):
        image, scale = _decode_reduced(blobs[row], channels, k, backend)
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
    _target_mode(channel_count)
    widths, heights = [a.shape[1] for a in arrays], [a.shape[0] for a in arrays]
    crops, geometry = _crops(
        len(arrays), (widths, heights), channel_count, lambda row, k: (arrays[row], 1.0), views, generator, False, workers,
    )
    return _finish(crops, geometry, views, generator)


def decode_array(data: bytes, channels: int) -> np.ndarray:
    """One stored file (upright, RGB or L) as uint8 (H, W, channels), full size."""
    image, _ = decode(data, channels)
    pixels = np.array(image) if isinstance(image, Image.Image) else np.asarray(image)
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def views_of_rows(rows: Sequence[bytes | np.ndarray], views: ViewsConfig, generator: torch.Generator, channels: int) -> list[torch.Tensor]:
    """Views of a batch whose rows are stored files (bytes) or decoded images (uint8 (H, W, C): a fixed-shape
    pool dataset's, or corrupted ones): views_from_encoded when all are files, else every file decoded in full
    and views_from_arrays."""
    if all(isinstance(row, (bytes, bytearray)) for row in rows):
        return views_from_encoded(rows, views, generator, channels)
    arrays = [row if isinstance(row, np.ndarray) else decode_array(row, channels) for row in rows]
    return views_from_arrays(arrays, views, generator)


# ---------------------------------------------------------------------------------------------- on a GPU


def _decode_on_device(blobs: list[bytes], channels: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 (C, H, W) per image on `device`: JPEGs with nvjpeg in one batched call, others (and any JPEG
    nvjpeg refuses) on the CPU with torchvision's decode_image (PIL past that), then moved."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in blobs]
    out: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [row for row, data in enumerate(blobs) if is_jpeg(data)]
    if jpegs:
        try:
            decoded = decode_jpeg([tensors[row] for row in jpegs], mode=mode, device=device)
            for row, image in zip(jpegs, decoded):
                out[row] = image
        except (RuntimeError, ValueError):  # one bad file fails the batch: one at a time, failures on the CPU
            for row in jpegs:
                try:
                    out[row] = decode_jpeg(tensors[row], mode=mode, device=device)
                except (RuntimeError, ValueError):
                    pass
    for row, image in enumerate(out):
        if image is None:
            try:
                image = decode_image(tensors[row], mode=mode)
            except (RuntimeError, ValueError):
                array = np.asarray(_decode_pil(blobs[row], channels, 1)[0])
                image = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1)
            out[row] = image.to(device, non_blocking=True)
    return out


def views_on_device(
    column: Sequence[bytes] | np.ndarray, views: ViewsConfig, generator: torch.Generator, channels: int,
    device: torch.device | str, *, sizes: Sequence[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """views_from_encoded made on `device`: on CUDA, JPEGs decoded by nvjpeg (full size), each crop sliced and
    resized with F.interpolate(bilinear, antialias=True), flipped, photometric on the device; uint8
    (N, C, S, S) on the device per view. The same geometry draws (from the CPU generator) as the CPU path.
    On a CPU device: views_from_encoded."""
    device = torch.device(device)
    if device.type != "cuda":  # the CPU path (moved to another kind of device, if asked)
        out = views_from_encoded(column, views, generator, channels, sizes=sizes)
        return out if device.type == "cpu" else [view.to(device) for view in out]
    blobs = [_as_bytes(data) for data in column]
    _target_mode(channels)
    known = list(sizes) if sizes is not None else [image_size(data) for data in blobs]
    widths, heights = [int(w) for w, _ in known], [int(h) for _, h in known]
    geometry = _Geometry(widths, heights, views, generator)
    images = _decode_on_device(blobs, channels, device)
    for row, image in enumerate(images):
        if tuple(image.shape[1:]) != (heights[row], widths[row]) or image.shape[0] != channels:
            raise ValueError(f"image {row} decodes to {tuple(image.shape)}, expected ({channels}, {heights[row]}, {widths[row]})")
    boxes = geometry.boxes.tolist()
    batches = []
    for index, spec in enumerate(geometry.specs):
        crops = [
            resize_crop_tensor(image[None], integer_box(boxes[row][index], 1.0, widths[row], heights[row]), spec.size)
            for row, image in enumerate(images)
        ]
        batches.append(torch.cat(crops).round_().clamp_(0, 255))  # uint8 levels, like the CPU path's crops
    return _finish(batches, geometry, views, generator)


# ---------------------------------------------------------------------------------------------- evaluation


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
    mode = _target_mode(channels)
    resize = round(size / crop_fraction)
    if isinstance(data, np.ndarray) and not (data.dtype == np.uint8 and data.ndim == 1):
        image, scale = to_pil(data), 1.0
        width, height = image.size
        image = image if image.mode == mode else image.convert(mode)
    else:
        blob = _as_bytes(data)
        width, height = image_size(blob)
        short = min(width, height)
        k = next(r for r in REDUCTIONS if r * resize <= short or r == 1)
        image, scale = _decode_reduced(blob, channels, k, backend)
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
