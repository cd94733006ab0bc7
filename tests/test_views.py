"""Views: seeded repeatability, independent views, shapes per crop spec, colour ops on 3 channels."""

from __future__ import annotations

import torch

from raysl.config import ViewsConfig
from raysl.views.batch import crop_and_flip, gaussian_blur, make_views, normalize, to_float
from raysl.config import CropSpec


def images(n=16, h=28, w=28, c=1, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, h, w, c), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_same_seed_same_views_and_new_seed_new_views():
    config = ViewsConfig()
    first = make_views(images(), config, torch.Generator().manual_seed(7))
    again = make_views(images(), config, torch.Generator().manual_seed(7))
    other = make_views(images(), config, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_two_views_of_one_image_differ():
    view_a, view_b = make_views(images(), ViewsConfig(), torch.Generator().manual_seed(0))
    for index in range(view_a.shape[0]):
        assert not torch.equal(view_a[index], view_b[index])


def test_shapes_follow_the_crop_specs_and_channels():
    config = ViewsConfig(
        crops=[{"count": 2, "size": 32, "scale": [0.4, 1.0]}, {"count": 3, "size": 12, "scale": [0.05, 0.4]}],
        blur={"prob": 0.5},
    )
    views = make_views(images(n=5, h=40, w=30, c=3), config, torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in views] == [(5, 3, 32, 32)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(v.dtype == torch.uint8 for v in views)


def test_full_scale_crop_without_flip_or_colour_is_the_image():
    config = ViewsConfig(
        crops=[{"count": 1, "size": 28, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}],
        flip=0.0, color_jitter={"prob": 0.0}, grayscale=0.0,
    )
    batch = images()
    (view,) = make_views(batch, config, torch.Generator().manual_seed(0))
    assert torch.equal(view, batch.permute(0, 3, 1, 2))


def test_flip_mirrors_horizontally():
    batch = to_float(images(n=4))
    spec = CropSpec(count=1, size=28, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = crop_and_flip(batch, spec, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped, batch.flip(-1), atol=1e-5, rtol=0)


def test_grayscale_option_makes_channels_equal():
    config = ViewsConfig(grayscale=1.0, color_jitter={"prob": 0.0})
    views = make_views(images(c=3), config, torch.Generator().manual_seed(0))
    assert torch.equal(views[0][:, 0], views[0][:, 1]) and torch.equal(views[0][:, 1], views[0][:, 2])


def test_blur_keeps_the_mean_and_lowers_the_variance():
    batch = to_float(images(n=8))
    blurred = gaussian_blur(batch, 1.0, (1.5, 1.5), torch.Generator().manual_seed(0))
    torch.testing.assert_close(blurred.mean(), batch.mean(), atol=0.01, rtol=0)
    assert blurred.var() < 0.5 * batch.var()
    assert torch.equal(gaussian_blur(batch, 0.0, (1.0, 2.0), torch.Generator().manual_seed(0)), batch)


def test_normalize_uses_the_dataset_statistics():
    batch = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    out = normalize(batch, torch.tensor([0.5]), torch.tensor([0.25]))
    torch.testing.assert_close(out, torch.full((2, 1, 4, 4), 2.0))


def test_the_separable_crop_grid_is_affine_grid():
    import torch.nn.functional as F

    from raysl.views.batch import crop_grid

    generator = torch.Generator().manual_seed(3)
    scale_x, scale_y = torch.rand(64, generator=generator) * 2 - 1, torch.rand(64, generator=generator)
    centre_x, centre_y = torch.rand(64, generator=generator) - 0.5, torch.rand(64, generator=generator) - 0.5
    theta = torch.zeros(64, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = scale_x, centre_x, scale_y, centre_y
    for size in (14, 28, 32):
        expected = F.affine_grid(theta, [64, 3, size, size], align_corners=False)
        assert torch.allclose(crop_grid(scale_x, centre_x, scale_y, centre_y, size), expected, atol=1e-6)


def _make_views_before_photometric(images: torch.Tensor, views: ViewsConfig, generator: torch.Generator) -> list[torch.Tensor]:
    """make_views as it was before `photometric` was split out of `augment` (copied, frozen)."""
    from raysl.views.batch import bernoulli, _gray, color_jitter, to_uint8

    def augment(images, spec, views, generator):
        out = crop_and_flip(images, spec, views.flip, generator)
        out = color_jitter(out, views, generator)
        if out.shape[1] == 3 and views.grayscale > 0:
            gray = bernoulli(out.shape[0], views.grayscale, generator, out.device).view(-1, 1, 1, 1)
            out = torch.where(gray, _gray(out).expand_as(out), out)
        if views.blur.prob > 0:
            out = gaussian_blur(out, views.blur.prob, views.blur.sigma, generator)
        return out

    source = to_float(images)
    return [to_uint8(augment(source, spec, views, generator)) for spec in views.crops for _ in range(spec.count)]


def test_make_views_is_unchanged_by_the_photometric_split():
    from raysl.views.batch import photometric

    configs = [
        ViewsConfig(),
        ViewsConfig.model_validate({
            "crops": [{"count": 2, "size": 32, "scale": [0.4, 1.0]}, {"count": 3, "size": 12, "scale": [0.05, 0.4]}],
            "blur": {"prob": 0.5}, "grayscale": 0.5,
        }),
    ]
    for config in configs:
        for channels in (1, 3):
            batch = images(n=16, h=40, w=30, c=channels, seed=channels)
            now = make_views(batch, config, torch.Generator().manual_seed(11))
            before = _make_views_before_photometric(batch, config, torch.Generator().manual_seed(11))
            assert len(now) == len(before) == config.num_views
            assert all(torch.equal(a, b) for a, b in zip(now, before))
    # photometric alone: the same draws whatever produced its input
    floats = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    config = ViewsConfig.model_validate({"blur": {"prob": 0.5}})
    first = photometric(floats, config, torch.Generator().manual_seed(2))
    assert torch.equal(first, photometric(floats, config, torch.Generator().manual_seed(2)))
    assert first.shape == floats.shape and 0 <= first.min() and first.max() <= 1
