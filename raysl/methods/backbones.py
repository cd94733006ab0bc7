"""Backbones, projector and predictor: the pieces every method shares.

A backbone is raysl's small CNN or any torchvision classification model by its registry name, built with
random weights and its classifier removed (the last nn.Linear becomes nn.Identity, so the state_dict keys
are torchvision's own, less the classifier's). ResNet-family models take an ImageNet or a CIFAR stem.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from raysl.config.model import ModelConfig, is_resnet_family


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class SmallCNN(nn.Module):
    """Three stages of two conv-BN-ReLU each (width, 2x, 4x channels), max-pool between, then an
    average pool to pool_size x pool_size. Cheap enough to pretrain on 2 CPU cores."""

    def __init__(self, in_channels: int, width: int = 32, pool_size: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_block(in_channels, width),
            *_conv_block(width, width),
            nn.MaxPool2d(2),
            *_conv_block(width, 2 * width),
            *_conv_block(2 * width, 2 * width),
            nn.MaxPool2d(2),
            *_conv_block(2 * width, 4 * width),
            *_conv_block(4 * width, 4 * width),
            nn.AdaptiveAvgPool2d(pool_size),
            nn.Flatten(),
        )
        self.out_dim = 4 * width * pool_size**2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, module)


def _with_in_channels(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     conv.groups, conv.bias is not None, conv.padding_mode)


def torchvision_backbone(name: str, in_channels: int, stem: str, image_size: int) -> nn.Module:
    """torchvision's `name` with random weights, the classifier (its last nn.Linear) removed, the first conv
    taking `in_channels`; `stem` cifar (ResNet family): conv1 3x3 stride 1, no max-pool. `out_dim` is the
    feature width (the removed classifier's input width)."""
    kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
    if name.startswith(("googlenet", "inception")):
        kwargs.update(aux_logits=False, init_weights=True)
    model = torchvision.models.get_model(name, weights=None, **kwargs)
    linears = [(path, module) for path, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"backbone {name}: no linear classifier to remove (a convolutional head); pick another model")
    path, classifier = linears[-1]
    _replace(model, path, nn.Identity())
    if stem == "cifar":
        if not is_resnet_family(name):
            raise ValueError(f"model.stem cifar is for the ResNet family; {name} keeps its own stem")
        model.conv1 = nn.Conv2d(in_channels, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        first = next((path, module) for path, module in model.named_modules() if isinstance(module, nn.Conv2d))
        _replace(model, first[0], _with_in_channels(first[1], in_channels))
    model.out_dim = classifier.in_features
    return model


def build_backbone(config: ModelConfig, in_channels: int, image_size: int | None = None) -> nn.Module:
    """The backbone `config` names, for images of `in_channels` channels and training crops of `image_size` px
    (default 224; a run's: raysl.methods.build_run_backbone)."""
    image_size = image_size or 224
    if config.backbone == "small_cnn":
        return SmallCNN(in_channels, config.width, config.pool_size)
    return torchvision_backbone(config.backbone, in_channels, config.resolved_stem(image_size), image_size)


def mlp(in_dim: int, hidden_dim: int, out_dim: int, *, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU-Linear head (projector or predictor)."""
    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden_dim, bias=False),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, out_dim, bias=not last_bn),
    ]
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)
