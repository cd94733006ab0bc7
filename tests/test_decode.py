"""The encoded-image path (raysl.views): RandomResizedCrop geometry on the original image, decoding
(DCT-domain reduction), views' shapes / order / repeatability, the evaluation transform, the device fallback."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import RandomResizedCrop, v2

from raysl.config import CropSpec, ViewsConfig
from raysl.views.decode import JPEG_DECODERS, decode, image_size
from raysl.views.encoded import Geometry, views_from_arrays, views_from_encoded
from raysl.views.evaluation import eval_box, eval_image, eval_images
from raysl.views.geometry import crop_boxes, crop_boxes_batch, reduction_for
from raysl.views.gpu import views_on_device

PLAIN = {"flip": 0.0, "color_jitter": {"prob": 0.0}, "grayscale": 0.0}  # geometry only


def smooth_image(width: int, height: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 (H, W, C): a coarse random grid upsampled, plus a little noise (JPEG-friendly)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    array = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    array = (array + rng.normal(0, 4, array.shape)).clip(0, 255).astype(np.uint8)
    return array if channels == 3 else array[..., :1].copy()


def encode(array: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(array[..., 0] if array.shape[2] == 1 else array)
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def mixed_column() -> list[bytes]:
    """Mixed sizes and formats: RGB PNG, gray JPEG, RGB JPEG, RGB WebP (when PIL has it), gray PNG."""
    column = [
        encode(smooth_image(60, 40, seed=1)),
        encode(smooth_image(50, 70, 1, seed=2), "JPEG", quality=90),
        encode(smooth_image(130, 90, seed=3), "JPEG", quality=80),
        encode(smooth_image(41, 33, 1, seed=5)),
    ]
    try:
        column.append(encode(smooth_image(80, 80, seed=4), "WEBP", quality=90))
    except (KeyError, OSError):  # a PIL without WebP
        pass
    return column


# ---------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("width,height", [(400, 100), (100, 400), (300, 300)])
def test_crop_boxes_follow_random_resized_crop(width, height):
    spec = CropSpec(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    boxes = crop_boxes(width, height, spec, 4000, torch.Generator().manual_seed(0)).double()
    left, top, w, h = boxes.unbind(1)
    assert boxes.shape == (4000, 4) and torch.equal(boxes, boxes.round())
    assert (left >= 0).all() and (top >= 0).all() and (w >= 1).all() and (h >= 1).all()
    assert (left + w <= width).all() and (top + h <= height).all()
    # torchvision's fallback: the whole image cut to the nearest allowed ratio, centred
    in_ratio = width / height
    fb_w = round(height * 4 / 3) if in_ratio > 4 / 3 else width
    fb_h = round(width * 3 / 4) if in_ratio < 3 / 4 else height
    fallback = (w == fb_w) & (h == fb_h) & (left == (width - fb_w) // 2) & (top == (height - fb_h) // 2)
    fits = ~fallback
    # the fits: area fraction in scale, ratio in ratio (up to rounding w and h to whole pixels)
    area = w * h / (width * height)
    low_area = (w - 0.5).clamp(min=0) * (h - 0.5).clamp(min=0) / (width * height)
    high_area = (w + 0.5) * (h + 0.5) / (width * height)
    assert ((high_area[fits] >= 0.08) & (low_area[fits] <= 1.0)).all()
    assert (((w + 0.5) / (h - 0.5).clamp(min=0.5))[fits] >= 3 / 4).all()
    assert (((w - 0.5) / (h + 0.5))[fits] <= 4 / 3).all()
    # the same distribution as torchvision's get_params (its own RNG): fallback rate, mean area, mean position
    torch.manual_seed(0)
    reference = torch.tensor([
        RandomResizedCrop.get_params(torch.empty(1, height, width), [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)
    ], dtype=torch.float64)  # (top, left, h, w)
    ref_area = reference[:, 2] * reference[:, 3] / (width * height)
    ref_fallback = ((reference[:, 3] == fb_w) & (reference[:, 2] == fb_h)).double().mean()
    assert abs(fallback.double().mean() - ref_fallback) < 0.03
    assert abs(area.mean() - ref_area.mean()) < 0.03
    assert abs((left + w / 2).mean() - (reference[:, 1] + reference[:, 3] / 2).mean()) < 0.03 * width
    assert abs((top + h / 2).mean() - (reference[:, 0] + reference[:, 2] / 2).mean()) < 0.03 * height
    if width == height:
        assert fallback.double().mean() < 0.01


def test_impossible_crops_fall_back_to_the_clamped_centre_crop():
    spec = CropSpec(scale=(0.9, 1.0), ratio=(3.0, 4.0))  # a wide crop of a tall image never fits
    boxes = crop_boxes(100, 400, spec, 50, torch.Generator().manual_seed(0))
    assert torch.equal(boxes, torch.tensor([[0.0, (400 - 33) // 2, 100.0, 33.0]]).expand(50, 4))
    wide = crop_boxes(400, 100, CropSpec(scale=(0.9, 1.0), ratio=(0.2, 0.25)), 5, torch.Generator().manual_seed(0))
    assert torch.equal(wide, torch.tensor([[(400 - 25) // 2, 0.0, 25.0, 100.0]]).expand(5, 4))


def test_batched_boxes_are_per_image_and_seeded():
    spec = CropSpec(scale=(0.2, 1.0))
    widths, heights = [400, 100, 300, 37], [100, 400, 300, 512]
    first = crop_boxes_batch(widths, heights, spec, torch.Generator().manual_seed(3))
    again = crop_boxes_batch(torch.tensor(widths), torch.tensor(heights), spec, torch.Generator().manual_seed(3))
    assert torch.equal(first, again) and first.shape == (4, 4)
    assert (first[:, 0] + first[:, 2] <= torch.tensor(widths)).all()
    assert (first[:, 1] + first[:, 3] <= torch.tensor(heights)).all()


def test_reduction_keeps_every_crop_at_least_its_size():
    boxes = torch.tensor([[[0, 0, 500, 400], [0, 0, 300, 300]], [[0, 0, 63, 200], [0, 0, 900, 900]],
                          [[0, 0, 900, 900], [0, 0, 900, 900]]], dtype=torch.float32)
    assert reduction_for(boxes, torch.tensor([64, 64])).tolist() == [4, 1, 8]
    assert reduction_for(boxes, torch.tensor([64, 64]), max_reduction=2).tolist() == [2, 1, 2]


# ---------------------------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("backend", ["pil", "simplejpeg"])
def test_decode_reduces_jpegs_in_the_dct_domain(backend):
    if backend not in JPEG_DECODERS:
        pytest.skip(f"{backend} not installed")
    array = smooth_image(960, 640)
    data = encode(array, "JPEG", quality=92)
    full, scale = decode(data, 3, backend=backend)
    assert scale == 1.0 and np.asarray(full).shape == (640, 960, 3)
    reduced, scale = decode(data, 3, reduce_to=(200, 200), backend=backend)  # 1/4 would be 160 high
    assert scale == 0.5 and np.asarray(reduced).shape == (320, 480, 3)
    gray, _ = decode(data, 1, reduce_to=(100, 100), backend=backend)
    assert np.asarray(gray).reshape(160, 240, -1).shape[2] == 1
    # DCT reduction ~ full decode + a box-filter downscale
    expected = np.asarray(Image.fromarray(np.asarray(full)).reduce(2), np.float32)
    assert np.abs(np.asarray(reduced, np.float32) - expected).mean() < 2.0
    png, scale = decode(encode(array), 3, reduce_to=(10, 10), backend=backend)  # PNG: whole, exact
    assert scale == 1.0 and np.array_equal(np.asarray(png), array)


def test_decode_converts_modes():
    rgb = smooth_image(30, 20)
    gray, _ = decode(encode(rgb), 1)
    assert np.array_equal(np.asarray(gray), np.asarray(Image.fromarray(rgb).convert("L")))
    as_rgb, _ = decode(encode(rgb[..., :1].copy()), 3)
    assert np.array_equal(np.asarray(as_rgb), np.repeat(rgb[..., :1], 3, axis=2))
    assert image_size(encode(rgb, "JPEG")) == (30, 20) == image_size(encode(rgb))


# ---------------------------------------------------------------------------------------------- views


@pytest.mark.parametrize("channels", [1, 3])
def test_views_from_encoded_shapes_dtypes_order(channels):
    column = mixed_column()
    views = ViewsConfig.model_validate({
        "crops": [{"count": 2, "size": 32, "scale": [0.3, 1.0]}, {"count": 1, "size": 16, "scale": [0.05, 0.3]}],
        "blur": {"prob": 0.5},
    })
    out = views_from_encoded(np.array(column, dtype=object), views, torch.Generator().manual_seed(0), channels)
    n = len(column)
    assert [tuple(v.shape) for v in out] == [(n, channels, 32, 32)] * 2 + [(n, channels, 16, 16)]
    assert all(v.dtype == torch.uint8 for v in out)
    again = views_from_encoded(column, views, torch.Generator().manual_seed(0), channels)
    other = views_from_encoded(column, views, torch.Generator().manual_seed(1), channels)
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    assert not torch.equal(out[0], other[0])
    assert not torch.equal(out[0], out[1])  # two views of a spec differ


def test_encoded_and_array_paths_share_the_geometry_and_order():
    arrays = [smooth_image(60, 40, seed=1), smooth_image(45, 90, seed=2), smooth_image(128, 128, seed=3)]
    views = ViewsConfig.model_validate({
        "crops": [{"count": 1, "size": 24, "scale": [0.3, 1.0]}, {"count": 2, "size": 12, "scale": [0.05, 0.4]}],
        "blur": {"prob": 0.5},
    })
    from_png = views_from_encoded([encode(a) for a in arrays], views, torch.Generator().manual_seed(4), 3)
    from_arrays = views_from_arrays(arrays, views, torch.Generator().manual_seed(4))
    threaded = views_from_arrays(arrays, views, torch.Generator().manual_seed(4), workers=2)
    assert [v.shape[-1] for v in from_png] == [24, 12, 12]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(from_png, from_arrays, threaded))
    gray = views_from_arrays([a[..., :1].copy() for a in arrays], views, torch.Generator().manual_seed(4))
    assert gray[0].shape == (3, 1, 24, 24)
    with pytest.raises(ValueError):
        views_from_arrays([arrays[0], arrays[1][..., :1].copy()], views, torch.Generator())


def test_a_whole_square_image_crop_is_the_image_resized():
    array = smooth_image(100, 100)
    views = ViewsConfig.model_validate({"crops": [{"count": 1, "size": 40, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}], **PLAIN})
    (view,) = views_from_encoded([encode(array)], views, torch.Generator().manual_seed(0), 3)
    expected = F.interpolate(torch.from_numpy(array).permute(2, 0, 1)[None], size=(40, 40), mode="bilinear", antialias=True)
    assert torch.equal(view, expected)
    pil = torch.from_numpy(np.array(Image.fromarray(array).resize((40, 40), Image.Resampling.BILINEAR))).permute(2, 0, 1)
    difference = (view[0].int() - pil.int()).abs()
    assert difference.float().mean() < 0.5 and difference.max() <= 8


def test_flip_probability_one_mirrors():
    column = mixed_column()
    base = {"crops": [{"count": 2, "size": 20, "scale": [0.2, 1.0]}], **PLAIN}
    straight = views_from_encoded(column, ViewsConfig.model_validate(base), torch.Generator().manual_seed(2), 3)
    mirrored = views_from_encoded(column, ViewsConfig.model_validate({**base, "flip": 1.0}), torch.Generator().manual_seed(2), 3)
    for a, b in zip(straight, mirrored):
        assert torch.equal(a.flip(-1), b)


def test_reduced_decoding_is_close_to_the_full_decode():
    data = [encode(smooth_image(960, 720, seed=s), "JPEG", quality=90) for s in range(3)]
    views = ViewsConfig.model_validate({"crops": [{"count": 2, "size": 64, "scale": [0.4, 1.0]}], **PLAIN})
    sizes = [image_size(d) for d in data]
    geometry = Geometry([w for w, _ in sizes], [h for _, h in sizes], views, torch.Generator().manual_seed(0))
    assert (reduction_for(geometry.boxes, geometry.sizes) >= 4).all()  # these crops are reduced
    reduced = views_from_encoded(data, views, torch.Generator().manual_seed(0), 3)
    full = views_from_encoded(data, views, torch.Generator().manual_seed(0), 3, reduce=False)
    for a, b in zip(reduced, full):
        difference = (a.float() - b.float()).abs()
        assert difference.mean() < 2.5 and difference.quantile(0.99) < 12


def test_photometric_ops_apply_to_encoded_views():
    column = [encode(smooth_image(64, 64, seed=s)) for s in range(16)]
    views = ViewsConfig.model_validate({"crops": [{"count": 1, "size": 24}], "grayscale": 1.0, "color_jitter": {"prob": 0.0}})
    (view,) = views_from_encoded(column, views, torch.Generator().manual_seed(0), 3)
    assert torch.equal(view[:, 0], view[:, 1]) and torch.equal(view[:, 1], view[:, 2])


def test_views_on_device_falls_back_to_the_cpu_path():
    column = mixed_column()
    views = ViewsConfig.model_validate({"crops": [{"count": 2, "size": 24}], "blur": {"prob": 0.5}})
    on_cpu = views_on_device(column, views, torch.Generator().manual_seed(5), 3, "cpu")
    expected = views_from_encoded(column, views, torch.Generator().manual_seed(5), 3)
    assert all(torch.equal(a, b) for a, b in zip(on_cpu, expected))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_views_on_the_gpu_match_the_cpu_path():
    # nvjpeg vs libjpeg-turbo IDCT, float vs uint8 resize: not bit-equal, the same views to a level or two.
    column = [encode(smooth_image(80 + 37 * s, 300 - 23 * s, seed=s), "JPEG", quality=90) for s in range(8)]
    column += [encode(smooth_image(90, 60, seed=9)), encode(smooth_image(70, 50, 1, seed=10), "JPEG")]
    views = ViewsConfig.model_validate({"crops": [{"count": 2, "size": 48, "scale": [0.2, 1.0]}], "blur": {"prob": 0.5}})
    for channels in (1, 3):
        on_gpu = views_on_device(column, views, torch.Generator().manual_seed(7), channels, "cuda")
        on_cpu = views_from_encoded(column, views, torch.Generator().manual_seed(7), channels, reduce=False)
        for gpu_view, cpu_view in zip(on_gpu, on_cpu):
            assert gpu_view.device.type == "cuda" and gpu_view.dtype == torch.uint8 and gpu_view.shape == cpu_view.shape
            difference = (gpu_view.cpu().int() - cpu_view.int()).abs()
            assert difference.float().mean() < 1.5 and (difference > 8).float().mean() < 0.01
            assert abs(gpu_view.float().mean().item() - cpu_view.float().mean().item()) < 1.0
            assert abs(gpu_view.float().std().item() - cpu_view.float().std().item()) < 1.0


# ---------------------------------------------------------------------------------------------- evaluation


def torchvision_eval(image: Image.Image, size: int) -> np.ndarray:
    transform = v2.Compose([v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)])
    out = np.asarray(transform(image))
    return out[..., None] if out.ndim == 2 else out


@pytest.mark.parametrize("width,height", [(300, 200), (200, 300), (257, 256)])
def test_eval_image_is_resize_then_centre_crop(width, height):
    array = smooth_image(width, height)
    expected = torchvision_eval(Image.fromarray(array), 224)
    for source in (encode(array), array):
        out = eval_image(source, 224, 3)
        assert out.shape == (224, 224, 3) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    gray = eval_image(encode(array), 32, 1)
    expected_gray = torchvision_eval(Image.fromarray(array).convert("L"), 32)
    assert gray.shape == (32, 32, 1) and np.abs(gray.astype(int) - expected_gray.astype(int)).max() <= 1


def test_eval_image_of_a_large_jpeg_uses_draft_and_stays_close():
    array = smooth_image(1200, 800)
    data = encode(array, "JPEG", quality=92)
    expected = torchvision_eval(Image.open(io.BytesIO(data)).convert("RGB"), 224)
    out = eval_image(data, 224, 3)
    difference = np.abs(out.astype(float) - expected.astype(float))
    assert difference.mean() < 2.0 and np.quantile(difference, 0.99) < 10
    column = [data, encode(smooth_image(300, 200)), encode(smooth_image(90, 120, 1), "JPEG")]
    batch = eval_images(column, 64, 3)
    assert batch.shape == (3, 64, 64, 3) and batch.dtype == np.uint8
    assert np.array_equal(batch, eval_images(np.array(column, dtype=object), 64, 3, workers=2))
    assert np.array_equal(batch[1], eval_image(column[1], 64, 3))
    assert math.isclose(sum(eval_box(300, 200, 224)[2:]), 2 * 224 * 200 / 256)
