"""Methods: each a module (backbone, heads, loss) whose forward(views) returns the loss, and whose
after_step(step, total_steps) runs after each optimiser step (momentum encoders). build_method builds the run's
backbone and hands it (with its feature width) to the method, which adds its heads and its loss."""

from __future__ import annotations

from torch import nn

from raysl.config import RunConfig
from raysl.methods.backbones import build_backbone
from raysl.methods.byol import BYOL
from raysl.methods.logo import LoGo
from raysl.methods.moco import MoCo
from raysl.methods.simclr import SimCLR
from raysl.methods.simsiam import SimSiam
from raysl.methods.wmse import WMSE

METHODS: dict[str, type[nn.Module]] = {
    "simclr": SimCLR, "moco": MoCo, "simsiam": SimSiam, "byol": BYOL, "wmse": WMSE,
    "logo-moco": LoGo, "logo-simsiam": LoGo,
}


def view_roles(run: RunConfig) -> list[str]:
    """Each view's crop role, in the order make_views returns them."""
    return [spec.role for spec in run.views.crops for _ in range(spec.count)]


def backbone_image_size(run: RunConfig) -> int:
    """The input size the run's backbone is built for: its first global crop's (a ViT's patch grid, the auto stem)."""
    return next(spec.size for spec in run.views.crops if spec.role == "global")


def build_run_backbone(run: RunConfig, in_channels: int) -> nn.Module:
    """The backbone run.model names, for `in_channels` channels at backbone_image_size (its stem resolved for it)."""
    return build_backbone(run.model, in_channels, backbone_image_size(run))


def build_method(run: RunConfig, in_channels: int) -> nn.Module:
    backbone = build_run_backbone(run, in_channels)
    if run.method.name.startswith("logo-"):
        return LoGo(backbone, backbone.out_dim, run.model, run.method, view_roles(run))
    return METHODS[run.method.name](backbone, backbone.out_dim, run.model, run.method)
