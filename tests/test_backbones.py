"""Backbones by torchvision name with the right stem, and the learning rate that follows the batch."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from raysl.config import RunConfig
from raysl.config.model import backbone_names
from raysl.errors import UserError
from raysl.methods import build_method
from raysl.training.loop import Trainer


def _run(backbone: str, size: int, stem: str = "auto", **extra) -> RunConfig:
    return RunConfig.model_validate({
        "model": {"backbone": backbone, "stem": stem, "projector_hidden": 32, "projector_out": 16},
        "views": {"crops": [{"count": 2, "size": size}]}, "batch_size": 8, "epochs": 1,
        "optimizer": {"name": "sgd", "lr": 0.05}, **extra,
    })


def _views(size: int, channels: int, steps: int = 2, batch: int = 8):
    generator = torch.Generator().manual_seed(size)
    return [[torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=generator) for _ in range(2)]
            for _ in range(steps)]


@pytest.mark.parametrize("backbone, size, stem, conv_stride, maxpool", [
    ("resnet18", 32, "auto", 1, False),      # auto below 64 px: the CIFAR stem
    ("resnet18", 64, "auto", 2, True),       # auto at 64 px: the ImageNet stem
    ("resnet18", 32, "imagenet", 2, True),
    ("resnet18", 64, "cifar", 1, False),
    ("resnet34", 32, "cifar", 1, False),
])
def test_resnets_build_with_the_stem_asked_and_train_two_steps(backbone, size, stem, conv_stride, maxpool):
    run = _run(backbone, size, stem)
    trainer = Trainer(run, 3, [0.5] * 3, [0.25] * 3, steps_per_epoch=2)
    resnet = trainer.method.backbone
    assert resnet.conv1.stride == (conv_stride, conv_stride) and isinstance(resnet.maxpool, nn.MaxPool2d) == maxpool
    assert resnet.out_dim == 512 and isinstance(resnet.fc, nn.Identity)
    before = [p.detach().clone() for p in trainer.method.parameters()]
    metrics = trainer.train_epoch(_views(size, 3))
    assert math.isfinite(metrics["loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.method.parameters()))


@pytest.mark.parametrize("backbone, size, width", [
    ("convnext_tiny", 32, 768), ("mobilenet_v3_small", 64, 1024), ("efficientnet_b0", 32, 1280), ("vit_b_16", 32, 768),
    ("regnet_y_400mf", 64, 440),
])
def test_other_torchvision_models_by_name_drop_their_classifier_and_train(backbone, size, width):
    run = _run(backbone, size)
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=2)  # gray images: the first conv takes 1 channel
    features = trainer.method.backbone(torch.rand(2, 1, size, size))
    assert features.shape == (2, width) == (2, trainer.method.backbone.out_dim)
    assert math.isfinite(trainer.train_epoch(_views(size, 1))["loss"])


def test_backbone_weights_keep_torchvisions_names():
    """A trained backbone's state_dict loads into torchvision's own model (less the classifier)."""
    backbone = build_method(_run("resnet50", 64), 3).backbone
    reference = torchvision.models.get_model("resnet50", weights=None)
    missing, unexpected = reference.load_state_dict(backbone.state_dict(), strict=False)
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected


def test_cifar_stem_matches_the_earlier_resnet18():
    """The CIFAR stem is what raysl's resnet18 was before backbones by name: 3x3 stride-1 conv1, no max-pool."""
    backbone = build_method(_run("resnet18", 28), 1).backbone
    assert backbone.conv1.kernel_size == (3, 3) and backbone.conv1.in_channels == 1 and isinstance(backbone.maxpool, nn.Identity)


def test_unknown_backbones_are_refused_with_close_matches():
    with pytest.raises(ValueError, match=r"unknown backbone 'resnet-18'; did you mean resnet18"):
        _run("resnet-18", 32)
    with pytest.raises(ValueError, match=r"did you mean convnext_tiny"):
        _run("convnxt_tiny", 32)
    with pytest.raises(ValueError, match=r"model.stem cifar is for the ResNet family"):
        _run("convnext_tiny", 32, "cifar")
    with pytest.raises(ValueError, match=r"vit_b_16 is built for one input size"):
        _run("vit_b_16", 32, evaluation={"image_size": 64})
    assert "resnet50" in backbone_names() and "small_cnn" in backbone_names()
    assert not any(name.startswith(("fasterrcnn", "squeezenet", "r3d", "quantized")) for name in backbone_names())


def test_unknown_backbone_in_a_sweep_file_names_the_field(tmp_path):
    from raysl.config import load_sweep_config

    path = tmp_path / "sweep.yaml"
    path.write_text("base:\n  model: {backbone: resnet-50}\n")
    with pytest.raises(UserError, match=r"base.model.backbone.*did you mean resnet50"):
        load_sweep_config(path)


@pytest.mark.parametrize("scaling, batch, expected", [
    ("none", 512, 0.1), ("linear", 512, 0.2), ("linear", 128, 0.05), ("sqrt", 1024, 0.2), ("linear", 256, 0.1),
])
def test_lr_follows_the_global_batch(scaling, batch, expected):
    run = RunConfig.model_validate({
        "model": {"width": 8, "projector_hidden": 32, "projector_out": 16}, "batch_size": batch, "epochs": 1,
        "schedule": {"warmup_epochs": 0}, "optimizer": {"name": "sgd", "lr": 0.1, "lr_scaling": scaling},
    })
    assert run.optimizer.scaled_lr(batch) == pytest.approx(expected)
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=4)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)  # step 0 of the cosine: the peak
    assert trainer.scheduler.base_lrs == [pytest.approx(expected)]


def test_reference_batch_sets_where_lr_is_exact():
    run = RunConfig.model_validate({"batch_size": 64, "optimizer": {"lr": 0.3, "lr_scaling": "linear", "reference_batch": 64}})
    assert run.optimizer.scaled_lr(64) == pytest.approx(0.3) and run.optimizer.scaled_lr(256) == pytest.approx(1.2)
