"""Methods: each a module (backbone, heads, loss) whose forward(views) returns the loss."""

from __future__ import annotations

from torch import nn

from raysl.config import RunConfig
from raysl.methods.simclr import SimCLR

METHODS: dict[str, type[nn.Module]] = {"simclr": SimCLR}


def build_method(run: RunConfig, in_channels: int) -> nn.Module:
    return METHODS[run.method.name](run.model, run.method, in_channels)
