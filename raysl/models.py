"""Backbones, projector and predictor: the pieces every method shares."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from raysl.config import ModelConfig


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


def cifar_resnet18(in_channels: int) -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 first conv, no max-pool, no classifier."""
    model = torchvision.models.resnet18(weights=None)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.fc = nn.Identity()
    model.out_dim = 512
    return model


def build_backbone(config: ModelConfig, in_channels: int) -> nn.Module:
    if config.backbone == "small_cnn":
        return SmallCNN(in_channels, config.width, config.pool_size)
    if config.backbone == "resnet18":
        return cifar_resnet18(in_channels)
    raise ValueError(f"unknown backbone {config.backbone!r}")


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
