"""The `model` and `method` sections: the backbone (by name), its projector, and each method's own fields.

Imports raysl.config.base only (and torchvision's model registry for the names it accepts).
"""

from __future__ import annotations

import difflib
import functools
from typing import Annotated, Any, Literal, Union

import torchvision
from pydantic import Discriminator, Field, Tag, field_validator

from raysl.config.base import Schema


@functools.cache
def backbone_names() -> tuple[str, ...]:
    """small_cnn and every torchvision classification model (not detection, segmentation, video, quantized)
    with a linear classifier to remove (SqueezeNet's is a convolution: left out) and that takes any crop size
    (MaxViT's windows need multiples of 224 px: left out; ViT is built for the crop size)."""
    names = torchvision.models.list_models(module=torchvision.models)
    return ("small_cnn", *(name for name in names if not name.startswith(("squeezenet", "maxvit"))))


def is_resnet_family(name: str) -> bool:
    return name.startswith(("resnet", "resnext", "wide_resnet"))


class ModelConfig(Schema):
    backbone: str = "small_cnn"
    """small_cnn (raysl's own, cheap on CPU) or any torchvision classification model by its registry name
    (resnet18, resnet50, convnext_tiny, vit_b_16, ...: torchvision.models.list_models()), built with random
    weights, its classifier removed; the feature width is read from the model."""
    stem: Literal["auto", "imagenet", "cifar"] = "auto"
    """ResNet-family backbones: imagenet (7x7 stride-2 conv + max-pool, as torchvision builds it) or cifar
    (3x3 stride-1 conv, no max-pool: for small images). auto: cifar when the first global crop is below 64
    px, else imagenet. Other torchvision models keep their own stem (cifar is refused for them)."""
    width: Annotated[int, Field(ge=4, le=512)] = 32
    """Channels of the small CNN's first stage (doubles per stage); ignored by torchvision backbones."""
    pool_size: Annotated[int, Field(ge=1, le=4)] = 1
    """Small CNN: average-pool the last feature map to pool_size x pool_size (1: global average pool).
    Features are 4 x width x pool_size^2 wide; above 1 they keep coarse layout (top vs bottom)."""
    projector_hidden: Annotated[int, Field(ge=8)] = 512
    """Hidden width of the projector MLP on top of the backbone."""
    projector_out: Annotated[int, Field(ge=8)] = 128
    """Output width of the projector: the embedding the loss sees."""

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        names = backbone_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown backbone {name!r}{hint} (small_cnn or a torchvision classification model name: "
                             f"torchvision.models.list_models(torchvision.models))")
        return name

    def resolved_stem(self, image_size: int) -> str:
        """The stem the backbone gets for training crops of `image_size` px (auto: cifar below 64 px for ResNets)."""
        if self.stem != "auto":
            return self.stem
        return "cifar" if image_size < 64 and is_resnet_family(self.backbone) else "imagenet"


Temperature = Annotated[float, Field(gt=0.0, le=10.0)]


Momentum = Annotated[float, Field(ge=0.0, le=1.0)]


class SimCLRConfig(Schema):
    name: Literal["simclr"] = "simclr"
    temperature: Temperature = 0.5
    """NT-Xent temperature."""


class MoCoConfig(Schema):
    """MoCo v2: query encoder, EMA key encoder, a queue of negatives (raysl/methods/moco.py)."""

    name: Literal["moco"] = "moco"
    temperature: Temperature = 0.2
    """InfoNCE temperature."""
    queue_size: Annotated[int, Field(ge=1)] = 4096
    """K keys kept as negatives; a multiple of the keys enqueued per step (global batch, x2 if symmetric)."""
    momentum: Momentum = 0.99
    """Key encoder EMA: theta_k <- m theta_k + (1 - m) theta_q after each optimiser step."""
    momentum_schedule: Literal["fixed", "cosine"] = "fixed"
    """cosine: m rises from `momentum` to 1 over the run (as BYOL's target)."""
    symmetric: bool = False
    """Also use view 2 as queries against view 1's keys (MoCo CIFAR demo: +2-3 kNN points)."""
    shuffle_bn_groups: Annotated[int, Field(ge=1)] = 4
    """Shuffle-BN: keys are encoded in this many random groups per rank (after a shuffle across ranks),
    so a key's batch statistics never come from the batch its query saw."""


class SimSiamConfig(Schema):
    """SimSiam: predictor on one branch, stop-gradient on the other, symmetrised negative cosine."""

    name: Literal["simsiam"] = "simsiam"
    predictor_hidden: Annotated[int, Field(ge=8)] = 128
    """Bottleneck of the predictor MLP (the paper: a quarter of the projector's output)."""


class BYOLConfig(Schema):
    """BYOL: online network + predictor regressing an EMA target network's projections."""

    name: Literal["byol"] = "byol"
    momentum: Momentum = 0.99
    """Base target EMA rate tau; it rises to 1 on a cosine schedule over the run."""
    predictor_hidden: Annotated[int, Field(ge=8)] = 512
    """Hidden width of the predictor MLP."""


class WMSEConfig(Schema):
    """W-MSE: whitened embeddings, MSE between every pair of an image's views (views.crops count = d)."""

    name: Literal["wmse"] = "wmse"
    w_size: Annotated[int, Field(ge=2)] = 128
    """Sub-batch whitened together; must exceed model.projector_out (about 2x is safe) and divide the batch."""
    w_iter: Annotated[int, Field(ge=1, le=16)] = 1
    """Repetitions with a fresh random split of the batch into sub-batches."""
    eps: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Covariance shrinkage: whiten with (1 - eps) cov + eps I."""


class LoGoMoCoConfig(MoCoConfig):
    """LoGo over MoCo: l_gg + l_lg + ll_weight x l_ll (raysl/methods/logo.py)."""

    name: Literal["logo-moco"] = "logo-moco"  # type: ignore[assignment]
    ll_weight: Annotated[float, Field(ge=0.0)] = 5e-4
    """lambda: weight of the local-to-local dissimilarity term."""
    affinity_hidden: Annotated[int, Field(ge=8)] = 256
    """Hidden width of the learned affinity (the MLP that scores a pair of local crops)."""


class LoGoSimSiamConfig(SimSiamConfig):
    """LoGo over SimSiam: l_gg + l_lg + ll_weight x l_ll (raysl/methods/logo.py)."""

    name: Literal["logo-simsiam"] = "logo-simsiam"  # type: ignore[assignment]
    ll_weight: Annotated[float, Field(ge=0.0)] = 1e-4
    """lambda: weight of the local-to-local dissimilarity term."""
    affinity_hidden: Annotated[int, Field(ge=8)] = 256
    """Hidden width of the learned affinity (the MLP that scores a pair of local crops)."""


def _method_name(value: Any) -> str:
    """The union's tag: method.name, simclr when not given."""
    if isinstance(value, dict):
        return value.get("name", "simclr")
    return getattr(value, "name", "simclr")


METHOD_CONFIGS = {
    "simclr": SimCLRConfig, "moco": MoCoConfig, "simsiam": SimSiamConfig, "byol": BYOLConfig, "wmse": WMSEConfig,
    "logo-moco": LoGoMoCoConfig, "logo-simsiam": LoGoSimSiamConfig,
}


MethodConfig = Annotated[
    Union[tuple(Annotated[config, Tag(name)] for name, config in METHOD_CONFIGS.items())],  # type: ignore[misc]
    Discriminator(_method_name),
]
