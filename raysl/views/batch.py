"""Random views of a batch of images, as whole-batch tensor ops (no per-image Python loop, no Ray).

`make_views(images, views, generator)` takes uint8 images (N, H, W, C) and returns one uint8 tensor
(N, C, size, size) per view: for each crop spec, `count` views, each a random resized crop and flip done
by one `grid_sample`, then `photometric`: colour jitter, grayscale and blur drawn per image. The same
generator state gives the same views, on the CPU or on an accelerator (the random numbers come from a
CPU generator either way; Ray Data actors use the CPU, `views.where: trainer` the Train worker's device). Ops that need colour (saturation, hue, grayscale) apply to 3-channel images only.

Differences from torchvision's per-image transforms, chosen for batching:
- a crop whose drawn area and ratio do not fit is shrunk to fit (torchvision retries, then centre-crops);
- colour jitter applies brightness, contrast, saturation, hue in that fixed order (torchvision shuffles it);
- blur uses one kernel length per batch (from the largest sigma) with a per-image sigma.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from raysl.config import CropSpec, ViewsConfig

LUMA = (0.299, 0.587, 0.114)


# Every random number is drawn on the CPU generator, in the same order whatever device the images are on,
# then moved there: the same generator state gives the same views on CPU and on an accelerator.
def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) * (high - low) + low).to(device)


def bernoulli(n: int, prob: float, generator: torch.Generator, device: torch.device | None = None) -> torch.Tensor:
    return (torch.rand(n, generator=generator) < prob).to(device)


def crop_and_flip(
    images: torch.Tensor, spec: CropSpec, flip_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Random resized crop (area fraction in spec.scale, aspect ratio in spec.ratio) plus horizontal
    flip, for float images (N, C, H, W) in [0, 1]; returns (N, C, spec.size, spec.size)."""
    n, _, height, width = images.shape
    area = _uniform(n, *spec.scale, generator)
    log_ratio = _uniform(n, math.log(spec.ratio[0]), math.log(spec.ratio[1]), generator)
    ratio = torch.exp(log_ratio)
    # Crop width / height as fractions of the image's (pixel aspect taken into account).
    crop_w = torch.sqrt(area * ratio * height / width).clamp(max=1.0)
    crop_h = torch.sqrt(area / ratio * width / height).clamp(max=1.0)
    centre_x = (torch.rand(n, generator=generator) * (1 - crop_w) + crop_w / 2) * 2 - 1
    centre_y = (torch.rand(n, generator=generator) * (1 - crop_h) + crop_h / 2) * 2 - 1
    flip = torch.where(bernoulli(n, flip_prob, generator), -1.0, 1.0)
    grid = crop_grid(crop_w * flip, centre_x, crop_h, centre_y, spec.size).to(images.device)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def crop_grid(scale_x: torch.Tensor, centre_x: torch.Tensor, scale_y: torch.Tensor, centre_y: torch.Tensor, size: int) -> torch.Tensor:
    """The sampling grid (N, size, size, 2) of F.affine_grid(theta, align_corners=False) for the axis-aligned
    theta [[scale_x, 0, centre_x], [0, scale_y, centre_y]], built from its two separable axes: the same
    values (to float rounding) without affine_grid's batched matmul, which took 14% of an actor's CPU."""
    base = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    xs = scale_x[:, None] * base + centre_x[:, None]  # (N, size): depends on the column only
    ys = scale_y[:, None] * base + centre_y[:, None]  # and on the row only
    n = xs.shape[0]
    return torch.stack((xs[:, None, :].expand(n, size, size), ys[:, :, None].expand(n, size, size)), dim=-1)


def _gray(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    # Channel by channel: the same sums as (images * weights).sum(dim=1) without its full-size temporary.
    red, green, blue = LUMA
    return images[:, 0:1] * red + images[:, 1:2] * green + images[:, 2:3] * blue


def _rotate_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate hue by `shift` turns (per image) in YIQ space: a per-image 3x3 linear map."""
    to_yiq = images.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    to_rgb = torch.linalg.inv(to_yiq)
    angle = shift * 2 * math.pi
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(images.shape[0], 3, 3, dtype=images.dtype, device=images.device)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2] = cos, -sin
    rotation[:, 2, 1], rotation[:, 2, 2] = sin, cos
    transform = to_rgb @ rotation @ to_yiq  # (N, 3, 3)
    return torch.einsum("nij,njhw->nihw", transform, images)


PHOTOMETRIC_CHUNK_BYTES = 4 * 2**20
"""photometric works through a batch in chunks of about this many bytes of float pixels, so that its dozen
passes over the pixels run from the cache instead of memory (a whole batch of 224 px views is ~100 MB); small
images (a batch of 28 px views is ~3 MB) go in one chunk, as before."""


def draw_photometric(n: int, channels: int, views: ViewsConfig, generator: torch.Generator,
                     device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Every random number the photometric ops of n images take, in their fixed order: colour jitter (apply,
    brightness, contrast, and for colour images saturation, hue), grayscale (colour images), blur (apply,
    sigma). Drawn on the CPU generator (see _uniform), then on `device`."""
    jitter = views.color_jitter
    draws = {
        "jitter": bernoulli(n, jitter.prob, generator, device),
        "brightness": _uniform(n, 1 - jitter.brightness, 1 + jitter.brightness, generator, device),
        "contrast": _uniform(n, 1 - jitter.contrast, 1 + jitter.contrast, generator, device),
    }
    if channels == 3:
        draws["saturation"] = _uniform(n, 1 - jitter.saturation, 1 + jitter.saturation, generator, device)
        draws["hue"] = _uniform(n, -jitter.hue, jitter.hue, generator, device)
        if views.grayscale > 0:
            draws["gray"] = bernoulli(n, views.grayscale, generator, device)
    if views.blur.prob > 0:
        draws["blur"] = bernoulli(n, views.blur.prob, generator)
        draws["sigma"] = _uniform(n, *views.blur.sigma, generator)
    return draws


def _jitter(images: torch.Tensor, draws: dict[str, torch.Tensor]) -> torch.Tensor:
    """Brightness, contrast (and for colour images saturation, hue) where draws["jitter"]; a new tensor, the
    steps in place on it (a new tensor per step cost more in page faults than the arithmetic)."""
    n = images.shape[0]
    out = (images * draws["brightness"].view(n, 1, 1, 1)).clamp_(0, 1)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out.sub_(mean).mul_(draws["contrast"].view(n, 1, 1, 1)).add_(mean).clamp_(0, 1)
    if "saturation" in draws:
        gray = _gray(out)
        out.sub_(gray).mul_(draws["saturation"].view(n, 1, 1, 1)).add_(gray).clamp_(0, 1)
        out = _rotate_hue(out, draws["hue"]).clamp_(0, 1)
    kept = ~draws["jitter"]
    if kept.any():
        out[kept] = images[kept]
    return out


def _blur(images: torch.Tensor, apply: torch.Tensor, sigmas: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Separable Gaussian blur, sigma per image, where `apply` (others pass an identity kernel: unchanged)."""
    n, channels, height, width = images.shape
    if not apply.any():
        return images
    apply, sigmas = apply.to(images.device), sigmas.to(images.device)
    radius = max(1, min(math.ceil(3 * max_sigma), (min(height, width) - 1) // 2))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernels = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigmas.view(-1, 1) ** 2))
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(images.dtype).expand(n, -1)
    kernels = torch.where(apply.view(-1, 1), kernels, identity)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (N*C, K)
    flat = images.reshape(1, n * channels, height, width)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernels.view(n * channels, 1, 1, -1), groups=n * channels)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernels.view(n * channels, 1, -1, 1), groups=n * channels)
    return flat.view(n, channels, height, width)


def apply_photometric(images: torch.Tensor, draws: dict[str, torch.Tensor], views: ViewsConfig) -> torch.Tensor:
    """Colour jitter, grayscale, blur of float images (n, C, S, S) with their draws (n each); a new tensor."""
    out = _jitter(images, draws)
    if "gray" in draws and draws["gray"].any():
        gray = draws["gray"]
        out[gray] = _gray(out[gray]).expand(-1, 3, -1, -1)
    if "blur" in draws:
        out = _blur(out, draws["blur"], draws["sigma"], views.blur.sigma[1])
    return out


def _chunks(images: torch.Tensor) -> list[slice]:
    n = images.shape[0]
    if images.device.type != "cpu":
        return [slice(0, n)]
    rows = max(1, PHOTOMETRIC_CHUNK_BYTES // max(1, images[0].numel() * 4))
    return [slice(start, start + rows) for start in range(0, n, rows)]


def photometric(images: torch.Tensor, views: ViewsConfig, generator: torch.Generator) -> torch.Tensor:
    """The photometric part of a view, after the crop and flip: colour jitter, then grayscale (3 channels
    only), then blur, each drawn per image from `generator`, for float images (N, C, S, S) in [0, 1] on any
    device; float in [0, 1], a new tensor. Shared by `make_views` and the encoded-image path (raysl.views.encoded).
    On the CPU in chunks of PHOTOMETRIC_CHUNK_BYTES (the same values: every op is per image)."""
    draws = draw_photometric(images.shape[0], images.shape[1], views, generator, images.device)
    parts = _chunks(images)
    if len(parts) == 1:
        return apply_photometric(images, draws, views)
    out = torch.empty_like(images)
    for part in parts:
        out[part] = apply_photometric(images[part], {key: value[part] for key, value in draws.items()}, views)
    return out


def photometric_uint8(images: torch.Tensor, views: ViewsConfig, generator: torch.Generator) -> torch.Tensor:
    """photometric of uint8 images (N, C, S, S), uint8 out: each chunk goes uint8 -> float -> ops -> uint8 while
    in the cache (no float copy of the whole batch). The same values as to_uint8(photometric(float images))."""
    draws = draw_photometric(images.shape[0], images.shape[1], views, generator, images.device)
    out = torch.empty_like(images)
    for part in _chunks(images):
        chunk = images[part].float().div_(255)
        out[part] = to_uint8(apply_photometric(chunk, {key: value[part] for key, value in draws.items()}, views))
    return out


def color_jitter(images: torch.Tensor, views: ViewsConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast (and for colour images saturation, hue) with views.color_jitter.prob per image."""
    n, channels = images.shape[:2]
    jitter = views.color_jitter
    device = images.device
    draws = {"jitter": bernoulli(n, jitter.prob, generator, device),
             "brightness": _uniform(n, 1 - jitter.brightness, 1 + jitter.brightness, generator, device),
             "contrast": _uniform(n, 1 - jitter.contrast, 1 + jitter.contrast, generator, device)}
    if channels == 3:
        draws["saturation"] = _uniform(n, 1 - jitter.saturation, 1 + jitter.saturation, generator, device)
        draws["hue"] = _uniform(n, -jitter.hue, jitter.hue, generator, device)
    return _jitter(images, draws)


def gaussian_blur(images: torch.Tensor, prob: float, sigma: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma, applied with probability `prob` per image."""
    n = images.shape[0]
    apply = bernoulli(n, prob, generator)
    sigmas = _uniform(n, *sigma, generator)
    return _blur(images, apply, sigmas, sigma[1])


def augment(images: torch.Tensor, spec: CropSpec, views: ViewsConfig, generator: torch.Generator) -> torch.Tensor:
    """One random view of float images (N, C, H, W) in [0, 1] for one crop spec; float in [0, 1]."""
    return photometric(crop_and_flip(images, spec, views.flip, generator), views, generator)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) to float (N, C, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] to uint8, in place on `images` (callers pass a tensor of their own)."""
    return images.mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def make_views(images: torch.Tensor, views: ViewsConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """All views of a uint8 batch (N, H, W, C): a list of uint8 (N, C, size, size), crop specs in order."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {tuple(images.shape)}")
    source = to_float(images)
    return [
        to_uint8(augment(source, spec, views, generator)) for spec in views.crops for _ in range(spec.count)
    ]


def normalize(
    images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, channels_last: bool = False
) -> torch.Tensor:
    """uint8 (N, C, H, W) to the model's float input: (x / 255 - mean) / std per channel."""
    out = (images.float().div_(255) - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out
