"""Corruptions: each does what its name says (measured), is fixed per image index, and composes; the grid PNG."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from raysl.config import CorruptionConfig
from raysl.data.corruptions import GAP, corrupt, describe, sample_grid_png


def gray(n: int = 64, h: int = 64, w: int = 64, c: int = 1, value: int = 128) -> np.ndarray:
    return np.full((n, h, w, c), value, np.uint8)


def textured(n: int = 8, h: int = 32, w: int = 32, c: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth gradients (another per channel) plus random texture in brightness: what JPEG must approximate."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([60 + 2 * x + y, 180 - x - y, 100 + y][:c], axis=-1)
    return np.clip(base + rng.normal(0, 30, (n, h, w, 1)), 0, 255).astype(np.uint8)


def changed_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    return (before != after).any(axis=-1)


@pytest.mark.parametrize("channels", [1, 3])
def test_salt_and_pepper_changes_a_fraction_p_of_pixels_to_black_or_white(channels):
    p = 0.01
    images = gray(c=channels)
    out = corrupt(images, np.arange(len(images)), CorruptionConfig(salt_pepper=p))
    changed = changed_pixels(images, out)
    pixels = changed.size
    assert abs(changed.mean() - p) < 4 * np.sqrt(p * (1 - p) / pixels)
    hit = out[changed]  # (changed pixels, channels)
    assert set(np.unique(hit)) <= {0, 255}
    assert (hit == hit[:, :1]).all(), "all channels of a pixel go black or white together"
    black = (hit[:, 0] == 0).mean()
    assert abs(black - 0.5) < 4 * np.sqrt(0.25 / len(hit))
    assert np.array_equal(out[~changed], images[~changed])


def test_salt_and_pepper_zero_changes_nothing():
    images = gray()
    out = corrupt(images, np.arange(len(images)), CorruptionConfig(salt_pepper=0.0, gaussian_noise=0.0))
    assert np.array_equal(out, images)


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_quality_sets_how_much_is_lost(channels):
    images = textured(c=channels)
    indices = np.arange(len(images))
    low = corrupt(images, indices, CorruptionConfig(jpeg_quality=10))
    high = corrupt(images, indices, CorruptionConfig(jpeg_quality=95))
    assert low.shape == high.shape == images.shape and low.dtype == high.dtype == np.uint8
    assert not np.array_equal(low, high)
    assert not np.array_equal(low, images) and not np.array_equal(high, images)
    error = {name: np.abs(out.astype(float) - images).mean() for name, out in (("low", low), ("high", high))}
    assert error["high"] < error["low"] / 2


def test_downsampling_removes_high_frequencies_and_keeps_low_ones():
    size = 64
    y, x = np.mgrid[0:size, 0:size]
    low_wave = 50 * np.sin(2 * np.pi * 2 * x / size)  # 2 cycles across the image
    checkerboard = 40 * (-1.0) ** (x + y)  # the highest frequency there is
    image = np.round(128 + low_wave + checkerboard).astype(np.uint8)[None, :, :, None]
    out = corrupt(image, np.array([0]), CorruptionConfig(downsample=4))
    assert out.shape == image.shape and out.dtype == np.uint8

    def spectrum(array: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.fft2(array[0, :, :, 0].astype(float)))

    before, after = spectrum(image), spectrum(out)
    freq = np.abs(np.fft.fftfreq(size) * size)
    high_band = np.maximum(freq[:, None], freq[None, :]) >= size / 4  # above the 16 px image's Nyquist
    high_before, high_after = (before[high_band] ** 2).sum(), (after[high_band] ** 2).sum()
    assert high_after < high_before / 100
    assert after[0, 2] > 0.7 * before[0, 2]  # the low sinusoid's bin
    assert abs(out.mean() - image.mean()) < 1  # averaged away (area), not aliased into a brightness shift


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [((28, 28, 1), 14, (14, 14)), ((32, 48, 3), 16, (11, 16)), ((48, 32, 1), 16, (16, 11)), ((28, 28, 3), 56, (56, 56))],
)
def test_resize_makes_the_longer_side_the_given_size(shape, size, expected):
    images = textured(n=3, h=shape[0], w=shape[1], c=shape[2])
    out = corrupt(images, np.arange(3), CorruptionConfig(resize=size))
    assert out.shape == (3, *expected, shape[2]) and out.dtype == np.uint8
    flat = gray(n=2, h=shape[0], w=shape[1], c=shape[2], value=77)
    assert (corrupt(flat, np.arange(2), CorruptionConfig(resize=size, downsample=3)) == 77).all()


def test_gaussian_noise_has_the_stated_standard_deviation():
    sigma = 0.05
    images = gray(n=32, c=3)
    out = corrupt(images, np.arange(len(images)), CorruptionConfig(gaussian_noise=sigma))
    difference = out.astype(float) - images
    assert abs(difference.std() / (sigma * 255) - 1) < 0.02
    assert abs(difference.mean()) < 0.1
    # Channels get independent noise.
    assert abs(np.corrcoef(difference[..., 0].ravel(), difference[..., 1].ravel())[0, 1]) < 0.02


RANDOM = CorruptionConfig(jpeg_quality=50, gaussian_noise=0.1, salt_pepper=0.05, seed=3)


def test_each_image_is_corrupted_the_same_whatever_its_batch_and_position():
    images = textured(n=16, h=28, w=28)
    indices = np.arange(100, 116)
    forward = corrupt(images, indices, RANDOM)
    backward = corrupt(images[::-1], indices[::-1], RANDOM)
    assert np.array_equal(forward, backward[::-1])
    assert np.array_equal(corrupt(images[5:7], indices[5:7], RANDOM), forward[5:7])
    # Another index for the same pixels, or another seed, draws other noise.
    assert not np.array_equal(corrupt(images, indices + 1, RANDOM), forward)
    assert not np.array_equal(corrupt(images, indices, RANDOM.model_copy(update={"seed": 4})), forward)


@pytest.mark.parametrize(("shape", "expected"), [((28, 28, 1), (20, 20)), ((24, 40, 3), (12, 20))])
def test_all_corruptions_compose(shape, expected):
    config = CorruptionConfig(resize=20, downsample=2, jpeg_quality=30, gaussian_noise=0.05, salt_pepper=0.01)
    images = textured(n=4, h=shape[0], w=shape[1], c=shape[2])
    out = corrupt(images, np.arange(4), config)
    assert out.shape == (4, *expected, shape[2]) and out.dtype == np.uint8


def test_inactive_config_returns_the_input():
    images = textured()
    assert not CorruptionConfig().active
    assert corrupt(images, np.arange(len(images)), CorruptionConfig(seed=5)) is images


def test_describe_names_the_corruptions():
    assert describe(CorruptionConfig()) == "clean"
    assert describe(CorruptionConfig(jpeg_quality=20, salt_pepper=0.01)) == "jpeg q=20, salt-pepper p=0.01"
    assert describe(CorruptionConfig(resize=14, downsample=4.0)) == "resize 14px, downsample x4"


@pytest.mark.parametrize("channels", [1, 3])
def test_sample_grid_is_a_png_of_rows_by_columns(channels):
    images = textured(n=5, h=28, w=28, c=channels)
    rows = [(describe(config), config) for config in (
        CorruptionConfig(), CorruptionConfig(salt_pepper=0.01), CorruptionConfig(resize=14), CorruptionConfig(jpeg_quality=10),
    )]
    scale = 3
    png = sample_grid_png(images, rows, scale=scale)
    grid = Image.open(io.BytesIO(png))
    assert grid.format == "PNG"
    assert grid.mode == ("L" if channels == 1 else "RGB")
    cells_width, cells_height = 5 * 28 * scale, len(rows) * 28 * scale
    assert cells_height <= grid.height <= cells_height + (len(rows) + 1) * GAP
    assert cells_width < grid.width <= cells_width + 6 * GAP + 250  # the title margin
    # The clean row's first cell is the first image enlarged (nearest) `scale` times, at the right of the titles.
    pixels = np.asarray(grid).reshape(grid.height, grid.width, channels)
    left = grid.width - 5 * (28 * scale + GAP)
    cell = pixels[GAP : GAP + 28 * scale, left : left + 28 * scale]
    assert np.array_equal(cell, images[0].repeat(scale, 0).repeat(scale, 1))
