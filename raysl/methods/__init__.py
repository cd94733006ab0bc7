"""Methods: each a module (backbone, heads, loss) whose forward(views) returns the loss, and whose
after_step(step, total_steps) runs after each optimiser step (momentum encoders)."""

from __future__ import annotations

from torch import nn

from raysl.config import RunConfig
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


def backbone_config(run: RunConfig):
    """run.model with its stem resolved for the run's first global crop (the input size the backbone is built for)."""
    size = next(spec.size for spec in run.views.crops if spec.role == "global")
    model = run.model.model_copy(update={"stem": run.model.resolved_stem(size)})
    model._image_size = size
    return model


def build_method(run: RunConfig, in_channels: int) -> nn.Module:
    if run.method.name.startswith("logo-"):
        return LoGo(backbone_config(run), run.method, in_channels, view_roles(run))
    return METHODS[run.method.name](backbone_config(run), run.method, in_channels)
