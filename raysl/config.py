"""The one typed schema: every config field of a run and a sweep, with every default, in one place.

A *run* config (what `raysl train` takes, and a sweep's `base`) says what to pretrain and how; a *sweep*
config adds a search space of dotted keys into the run config, a scheduler and trial resources.
Files are YAML read with `yaml.safe_load` only. Everything is validated before Ray starts: a problem
raises `UserError` naming the file and the field.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, ValidationError, field_validator, model_validator

from raysl.errors import UserError

KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder")
DatasetKind = Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder"]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]
Positive = Annotated[float, Field(gt=0.0)]


class Schema(BaseModel):
    """Base of every config section: unknown keys are errors, at any depth. The string under a field is its
    description (pydantic's use_attribute_docstrings): docs/configuration-reference.md is made from them."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


# ----------------------------------------------------------------------------- run config


class SubsetConfig(Schema):
    """Quantity: pretrain on a seeded random subset of the train split (count and fraction unset: all of it).

    Nested: with one seed, a smaller subset is always contained in a larger one (prefixes of one seeded
    permutation; per class when balanced)."""

    count: Annotated[int, Field(ge=1)] | None = None
    """Pretrain on this many train images (give count or fraction, not both)."""
    fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Pretrain on this fraction of the train images (give count or fraction, not both)."""
    seed: int = 0
    """Seed of the subset's permutation: with one seed, smaller subsets nest in larger ones."""
    balanced: bool = False
    """The same number of images from every class (the first classes get one more when it does not divide)."""
    epoch_size: Literal["subset", "full"] = "subset"
    """subset: an epoch is one pass over the subset. full: an epoch repeats the subset up to the full train
    split's size, so every subset size trains the same number of steps (what a quantity study compares)."""

    @model_validator(mode="after")
    def _one_size(self) -> SubsetConfig:
        if self.count is not None and self.fraction is not None:
            raise ValueError("give count or fraction, not both")
        return self


class CorruptionConfig(Schema):
    """Quality: corruptions of the pretraining images only (the kNN monitor and `raysl eval` see clean
    images). Composable; applied in this order: resize, downsample, jpeg_quality, gaussian_noise,
    salt_pepper. Each image's corruption is fixed (seeded by `seed` and the image's index), like a
    corrupted dataset, not a fresh augmentation every epoch."""

    resize: Annotated[int, Field(ge=4, le=1024)] | None = None
    """Make the pretraining images this many pixels on a side (smaller images; crops then upsample them)."""
    downsample: Annotated[float, Field(ge=1.0, le=64.0)] = 1.0
    """Shrink by this factor (area) then enlarge back to the original size (bilinear): detail is lost."""
    jpeg_quality: Annotated[int, Field(ge=1, le=100)] | None = None
    """Re-encode as JPEG at this quality (1: worst, 100: best)."""
    gaussian_noise: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Add N(0, sigma^2) noise, sigma in units of the 0..1 pixel range."""
    salt_pepper: Fraction = 0.0
    """Set each pixel to black or white (equally likely) with this probability (the paper: 0.01)."""
    seed: int = 0
    """Seed of the corruptions' draws (with each image's index: the same corruption every epoch)."""

    @property
    def active(self) -> bool:
        return bool(self.resize or self.downsample > 1 or self.jpeg_quality or self.gaussian_noise or self.salt_pepper)


def _check_source(path: str | None, kind: str | None, source: str | None, prefix: str) -> None:
    """A dataset is a prepared `path`, or a `kind` to prepare (an image folder also needs its `source`)."""
    if path is None and kind is None:
        raise ValueError(f"give {prefix}path (a prepared dataset) or {prefix}kind (a dataset to prepare)")
    if path is None and kind == "image-folder" and source is None:
        raise ValueError(f"{prefix}kind image-folder needs {prefix}source (the folder)")


class PoolDataset(Schema):
    """Domain: another prepared dataset whose train images join the pretraining set."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$")] | None = None
    """What its metrics are called (knn_top1/NAME); default: its kind, or the last part of its path."""
    kind: DatasetKind | None = None
    """A known dataset kind, prepared on first use (as `data.kind`)."""
    source: str | None = None
    """Where the raw files of `kind` are (as `data.source`)."""
    path: str | None = None
    """A dataset made by `raysl prepare` (as `data.path`); give path or kind."""
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    """Share of each epoch's pretraining images, against data.weight and the other pool entries
    (0: evaluated on, not pretrained on)."""

    @model_validator(mode="after")
    def _has_a_source(self) -> PoolDataset:
        _check_source(self.path, self.kind, self.source, prefix="")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind or self.path.rstrip("/").rsplit("/", 1)[-1]


class DataConfig(Schema):
    kind: DatasetKind | None = "fashion-mnist"
    """A known dataset kind, prepared on first use into `cache_dir` when `path` is not given."""
    source: str | None = None
    """Where the raw files of `kind` are (None: the kind's default, e.g. Debian's Fashion-MNIST)."""
    path: str | None = None
    """A dataset made by `raysl prepare` (local path or s3:// / gs:// URI); wins over `kind`."""
    cache_dir: str = "~/.cache/raysl/datasets"
    """Where a known `kind` is prepared on first use (shown in the log)."""
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    """When `kind` is prepared on first use: resize every image to this size (as `raysl prepare --image-size`);
    pool entries are prepared at their own size."""
    train_limit: Annotated[int, Field(ge=1)] | None = None
    """Pretrain on the first N train images only (used by --smoke)."""
    subset: SubsetConfig = Field(default_factory=SubsetConfig)
    """Quantity: pretrain on a seeded, nested subset of the train split."""
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)
    """Quality: fixed corruptions of the pretraining images."""
    weight: Annotated[float, Field(ge=0.0)] = 1.0
    """This dataset's share of the pretraining images when `pool` is given (0: pretrain on the pool only,
    still evaluate on this dataset: the out-of-domain case)."""
    pool: list[PoolDataset] = Field(default_factory=list)
    """Domain pooling: more prepared datasets pretrained on with this one, mixed by weight. An epoch keeps
    this dataset's (subset) size, split by weight (largest remainder; weight 0 gets none): each share a seeded
    nested subset of a train split (repeated if it has fewer). Every image is brought to this dataset's shape:
    resized (bilinear, antialiased) to its height and width, gray -> RGB by repeating the channel, RGB -> gray
    by luma (ITU-R 601), normalised with this dataset's mean and std. kNN is reported on each (knn_top1/NAME)."""

    @model_validator(mode="after")
    def _has_a_source(self) -> DataConfig:
        _check_source(self.path, self.kind, self.source, prefix="data.")
        if self.weight + sum(entry.weight for entry in self.pool) <= 0:
            raise ValueError("data.weight and data.pool weights are all 0: nothing to pretrain on")
        names = [self.label, *(entry.label for entry in self.pool)]
        if len(set(names)) != len(names):
            raise ValueError(f"data.pool: two datasets are called {sorted({n for n in names if names.count(n) > 1})} "
                             "(the main dataset is named after its kind or path); give each pool entry a distinct name")
        return self

    @property
    def label(self) -> str:
        """The main dataset's name in metrics and reports."""
        return self.kind if self.path is None else self.path.rstrip("/").rsplit("/", 1)[-1]


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
        from raysl.models import backbone_names

        names = backbone_names()
        if name not in names:
            close = difflib.get_close_matches(name, names, n=4, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"unknown backbone {name!r}{hint} (small_cnn or a torchvision classification model name: "
                             f"torchvision.models.list_models(torchvision.models))")
        return name

    def resolved_stem(self, image_size: int) -> str:
        """The stem the backbone gets for training crops of `image_size` px (auto: cifar below 64 px for ResNets)."""
        from raysl.models import is_resnet_family

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


class OptimizerConfig(Schema):
    name: Literal["sgd", "lars", "adamw"] = "adamw"
    """sgd, lars (SGD with layer-wise trust ratios) or adamw."""
    lr: Annotated[float, Field(gt=0.0, le=1e6)] = 2e-3
    """Base learning rate. The optimiser runs at lr x scale(batch_size / reference_batch), scale by lr_scaling."""
    lr_scaling: Literal["linear", "sqrt", "none"] = "none"
    """How the learning rate follows the global batch: linear (lr x batch / reference_batch, Goyal et al.; the
    SimCLR / MoCo / BYOL convention), sqrt (LARS / LAMB convention), none (lr as given)."""
    reference_batch: Annotated[int, Field(ge=1)] = 256
    """The global batch at which the optimiser runs at exactly lr."""
    weight_decay: Annotated[float, Field(ge=0.0, le=1.0)] = 1e-4
    """Weight decay of the optimiser."""
    momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.9
    """SGD / LARS momentum (AdamW uses beta1 = 0.9)."""
    lars_trust: Annotated[float, Field(gt=0.0, le=1.0)] = 1e-3
    """LARS trust coefficient."""

    def scaled_lr(self, batch_size: int) -> float:
        """The learning rate the optimiser runs at for a global batch of `batch_size` images."""
        ratio = batch_size / self.reference_batch
        return self.lr * {"linear": ratio, "sqrt": ratio**0.5, "none": 1.0}[self.lr_scaling]


class ScheduleConfig(Schema):
    warmup_epochs: Annotated[float, Field(ge=0.0)] = 1.0
    """Linear warm-up from 0, then cosine decay to `final_lr_ratio` x lr at the last step."""
    final_lr_ratio: Fraction = 0.0
    """The learning rate at the last step, as a fraction of the (scaled) lr."""


class CropSpec(Schema):
    count: Annotated[int, Field(ge=1, le=16)] = 2
    """Views cut with this spec from each image."""
    role: Literal["global", "local"] = "global"
    """LoGo: global crops (scale lower bound r_g) or local crops (scale upper bound r_l); others: global."""
    size: Annotated[int, Field(ge=8, le=1024)] = 28
    """Side of the view in pixels (square): each crop is resized to size x size."""
    scale: tuple[Annotated[float, Field(gt=0.0, le=1.0)], Annotated[float, Field(gt=0.0, le=1.0)]] = (0.3, 1.0)
    """Area of the crop as a fraction of the image: [lower, upper] (RandomResizedCrop's scale)."""
    ratio: tuple[Positive, Positive] = (3 / 4, 4 / 3)
    """Aspect ratio range of the crop (RandomResizedCrop's ratio)."""

    @model_validator(mode="after")
    def _ordered(self) -> CropSpec:
        if self.scale[0] > self.scale[1]:
            raise ValueError(f"scale lower bound {self.scale[0]} exceeds upper bound {self.scale[1]}")
        if self.ratio[0] > self.ratio[1]:
            raise ValueError(f"ratio lower bound {self.ratio[0]} exceeds upper bound {self.ratio[1]}")
        return self


class ColorJitterConfig(Schema):
    prob: Fraction = 0.8
    """Probability of colour jitter, per view."""
    brightness: Fraction = 0.4
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: Fraction = 0.4
    """Contrast factor drawn from [1 - c, 1 + c]."""
    saturation: Fraction = 0.4
    """Colour images only, like hue and grayscale."""
    hue: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Hue shift drawn from [-h, h] (colour images only)."""


class BlurConfig(Schema):
    prob: Fraction = 0.0
    """Probability of a Gaussian blur, per view (0: off)."""
    sigma: tuple[Positive, Positive] = (0.1, 2.0)
    """The blur's sigma is drawn from this range, per image."""


class ViewsConfig(Schema):
    """Random views as data: crop specs, then flip, colour jitter, grayscale, blur (per view)."""

    crops: list[CropSpec] = Field(default_factory=lambda: [CropSpec()], min_length=1)
    """Crop specs in order; every view is one random resized crop of one spec."""
    flip: Fraction = 0.5
    """Probability of a horizontal flip, per view."""
    color_jitter: ColorJitterConfig = Field(default_factory=ColorJitterConfig)
    """Brightness, contrast, saturation and hue jitter, per view."""
    grayscale: Fraction = 0.2
    """Probability of turning a colour view gray, per view."""
    blur: BlurConfig = Field(default_factory=BlurConfig)
    """Gaussian blur, per view."""
    where: Literal["data", "trainer"] = "data"
    """Who makes the views. data: Ray Data's augmentation actors, on CPU nodes (the default). trainer: Ray
    Data delivers the decoded uint8 images (data conditions applied) and each Train worker makes the views on
    its own device, a GPU when it has one, with the same code and crop spec: for when CPU augmentation cannot
    keep a GPU fed (see docs/performance.md)."""

    @property
    def num_views(self) -> int:
        return sum(spec.count for spec in self.crops)


Budget = Union[Annotated[int, Field(strict=True, ge=1)], Annotated[float, Field(gt=0.0, le=1.0)]]


class ProbeConfig(Schema):
    """Linear probe on frozen, L2-normalised backbone features (computed once): standardised with the training
    features' statistics, then one linear layer trained with AdamW on cross-entropy; train split (the budget's
    labels) -> test split."""

    epochs: Annotated[int, Field(ge=1)] = 100
    """Epochs of linear-probe training."""
    lr: Annotated[float, Field(gt=0.0)] = 1e-2
    """The probe's AdamW learning rate."""
    weight_decay: Annotated[float, Field(ge=0.0)] = 1e-5
    """The probe's AdamW weight decay."""
    batch_size: Annotated[int, Field(ge=1)] = 1024
    """The probe's batch of features."""


class EvaluationConfig(Schema):
    """kNN monitor: clean train split as the bank, test split as queries, cosine, weighted vote."""

    knn_k: Annotated[int, Field(ge=1)] = 200
    """Neighbours in the kNN vote."""
    knn_temperature: Positive = 0.1
    """Weight of a neighbour in the vote: exp(similarity / knn_temperature)."""
    bank_limit: Annotated[int, Field(ge=1)] | None = None
    """A class-balanced bank of N train images: the same number of each class (the first classes one more when
    it does not divide; a class with fewer gives all it has), the first in stored order (rows were shuffled when
    prepared). None: every train image (the protocol)."""
    query_limit: Annotated[int, Field(ge=1)] | None = None
    """The first N test images as queries (None: all)."""
    every: Annotated[int, Field(ge=1)] = 1
    """Run the kNN monitor every N epochs (and always after the last). Epochs between report the last measured
    knn_top1 (knn_epoch says which epoch it is from), so ASHA's rungs should fall on measured epochs."""
    feature_dtype: Literal["float16", "float32"] = "float16"
    """How bank and query features are kept (on the model's device): float16 halves the memory of the bank."""
    pixel_cache_mb: Annotated[float, Field(ge=0.0)] = 1024.0
    """Evaluation images are kept decoded in memory between evaluations when this rank's share fits in this
    many MiB (Fashion-MNIST's 70k: 52 MiB); otherwise they are streamed from the shards at every evaluation,
    so memory holds features, not pixels. 0: always stream."""
    batch_size: Annotated[int, Field(ge=1)] | None = None
    """Images per feature-extraction batch. None: 256 on CPU (a small CNN's features came 1.6x faster than
    at 1024 on the dev machine: cache), 1024 on an accelerator."""
    label_sets: list[str] = Field(default_factory=lambda: ["label"], min_length=1)
    """Granularity: label sets to evaluate against. A label column of the prepared dataset (label;
    label_coarse for CIFAR-100) or a label-map file: a shipped name (fashion-mnist-4) or a YAML path mapping
    each group to its classes. The first is the monitor's knn_top1 (what ASHA ranks); others: knn_top1/NAME."""
    budgets: list[Budget | Literal["all"]] = Field(default_factory=lambda: ["all"], min_length=1)
    """Labeled budgets for `raysl eval` and the final evaluation: an int is labels per class, a float in
    (0, 1] a fraction of the labeled train split, all: every label. A seeded (budget_seed) nested subset."""
    budget_seed: int = 0
    """Seed of the labeled budgets' subsets (also the linear probe's seed)."""
    final: bool = False
    """After the last epoch, also run the full evaluation (kNN top-1/top-5 and the linear probe, per label
    set, budget and pool dataset) and write eval.json into the final checkpoint (a sweep's report plots it)."""
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    """The linear probe of the final evaluation and of `raysl eval`."""
    image_size: Annotated[int, Field(ge=8, le=1024)] | None = None
    """Encoded (variable-size) datasets: the side of the evaluation images (None: the first global crop's
    size, the training size). Fixed-shape datasets are evaluated at their own shape, as before."""
    crop_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.875
    """Encoded datasets' evaluation transform: the short side resized to image_size / crop_fraction, then a
    centre crop of image_size (0.875: 256 -> 224, the ImageNet evaluation convention)."""

    def feature_batch(self, device_type: str) -> int:
        """batch_size, or its default for this kind of device ("cpu", "cuda", ...)."""
        return self.batch_size or (256 if device_type == "cpu" else 1024)


# Kubernetes-style label syntax, as Ray checks node labels and label selectors.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}"


def _check_labels(labels: dict[str, str]) -> dict[str, str]:
    if not labels:
        raise ValueError("give at least one label, or leave the field out (any node)")
    for key, value in labels.items():
        if key.startswith("ray.io/") or not re.fullmatch(_LABEL_KEY, key):
            raise ValueError(f"label key {key!r} is not a valid Ray node label key (e.g. raysl/role)")
        if not re.fullmatch(_LABEL_NAME, value):
            raise ValueError(f"label value {value!r} of {key!r} is not a valid Ray node label value (e.g. augment)")
    return labels


NodeLabels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class ResourcesConfig(Schema):
    workers: Annotated[int, Field(ge=1)] = 1
    """Train workers (DDP ranks) per run; batch_size must be a multiple of it."""
    cpus_per_worker: Annotated[float, Field(gt=0.0)] = 1.0
    """CPUs each Train worker reserves."""
    gpus_per_worker: Annotated[float, Field(ge=0.0)] = 0.0
    """GPUs each Train worker reserves (0: train on CPU)."""
    data_cpus: Annotated[float, Field(gt=0.0)] = 0.5
    """CPUs each Ray Data read task and augmentation actor reserves (from CPUs no trial reserves)."""
    data_actors: Annotated[int, Field(ge=1)] = 1
    """Augmentation actors per run (each a long-lived process making the views)."""
    torch_threads: Annotated[int, Field(ge=1)] | None = None
    """Threads per Train worker (None: ceil(cpus_per_worker))."""
    augment_on: NodeLabels | None = None
    """Node labels Ray Data's read tasks and augmentation actors must run on, e.g. {raysl/role: augment}
    (the CPU node type of cluster/*.yaml). None: any node."""
    train_on: NodeLabels | None = None
    """Node labels Train workers must run on, e.g. {raysl/role: train} (the GPU node type). None: any node."""
    trial_loop: Literal["auto", "train"] = "auto"
    """In a sweep, auto: a single-worker trial runs its training loop in the Tune trial itself (no TorchTrainer
    controller, worker group or placement group of its own; the same reports, checkpoints and resume); train:
    every trial through a TorchTrainer. Trials of several workers, or placed by train_on, always use Ray Train."""


class RunConfig(Schema):
    """One pretraining run: what `raysl train` takes and what a sweep's `base` holds."""

    seed: int = 0
    """Seeds the initial weights (the same on every rank) and each rank's random draws."""
    data: DataConfig = Field(default_factory=DataConfig)
    """What to pretrain on: the dataset and its data conditions (quantity, quality, domain)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """The backbone (small_cnn or a torchvision model) and the projector."""
    method: MethodConfig = Field(default_factory=SimCLRConfig)
    """The self-supervised method and its own fields, chosen by `method.name`."""
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    """The optimiser and how its learning rate follows the batch."""
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    """The learning-rate schedule: per-step warm-up, then cosine."""
    views: ViewsConfig = Field(default_factory=ViewsConfig)
    """The random views (crops, flip, colour jitter, grayscale, blur) and who makes them."""
    epochs: Annotated[int, Field(ge=1, le=100000)] = 10
    """Epochs of pretraining; also ASHA's `max_t` when that is not given."""
    batch_size: Annotated[int, Field(ge=2)] = 256
    """Global batch (images, not views), split evenly over workers."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on GPU, fp32 on CPU."""
    channels_last: bool = True
    """NHWC memory format for convolutions: about 1.5x faster training of the small CNN on CPU."""
    compile: bool = False
    """torch.compile the backbone that takes gradients (in place: checkpoints keep the same keys). The
    first steps pay the compilation; see docs/performance.md before turning it on."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """The kNN monitor (what ASHA ranks), the final evaluation and the linear probe."""
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    """Train workers, CPUs and GPUs, Ray Data's share, node labels."""
    checkpoints_to_keep: Annotated[int, Field(ge=1)] = 2
    """Train checkpoints kept per run (Ray Train's `CheckpointConfig(num_to_keep)`)."""
    max_failures: Annotated[int, Field(ge=-1)] = 1
    """Times Ray Train restarts a run's workers after a worker process or node dies, each time from the
    last checkpoint (-1: without limit). A non-finite loss is never retried."""
    storage_path: str = "./results"
    """Where `raysl train` writes the run (`<storage_path>/<name>`): a local path or an s3:// / gs:// URI. A
    sweep's trials go under its experiment directory instead (`<storage_path>/<name>/trial_<id>` of the sweep
    file when a trial runs its loop itself, else `<storage_path>/<name>/train/<id>`)."""
    name: str = "train"
    """The run's directory under `storage_path` (`raysl train`)."""
    init_from: str | None = None
    """Start from these backbone weights (model weights only; a `raysl export` directory or a checkpoint of any
    method: its backbone), e.g. to continue pretraining on another domain or with another method. Heads,
    optimiser, schedule and epochs start fresh; momentum encoders start as copies. Resuming a run (its own
    checkpoints) is another thing and stays exact: its checkpoint replaces these weights."""

    @property
    def eval_size(self) -> int:
        """The side of an encoded dataset's evaluation images: evaluation.image_size, else the first global crop's."""
        return self.evaluation.image_size or next(spec.size for spec in self.views.crops if spec.role == "global")

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.batch_size % self.resources.workers:
            raise ValueError(
                f"batch_size {self.batch_size} must be a multiple of resources.workers {self.resources.workers}"
            )
        self._check_views()
        self._check_method()
        self._check_model()
        if len(set(self.evaluation.label_sets)) != len(self.evaluation.label_sets):
            raise ValueError(f"evaluation.label_sets {self.evaluation.label_sets} names one set twice")
        if self.schedule.warmup_epochs > self.epochs:
            raise ValueError(f"schedule.warmup_epochs {self.schedule.warmup_epochs} exceeds epochs {self.epochs}")
        return self

    def _check_views(self) -> None:
        name, crops = self.method.name, self.views.crops
        if name.startswith("logo-"):
            roles = {role: [spec for spec in crops if spec.role == role] for role in ("global", "local")}
            for role, specs in roles.items():
                if sum(spec.count for spec in specs) < 2:
                    raise ValueError(
                        f"{name} needs at least 2 {role} crops (views.crops: a spec with role {role} and count >= 2)"
                    )
                if len({spec.size for spec in specs}) != 1:
                    raise ValueError(f"{name}: every {role} crop spec needs the same size (one backbone pass per size)")
            return
        if any(spec.role == "local" for spec in crops):
            raise ValueError(f"views.crops: role local is for logo-moco / logo-simsiam; {name} takes global crops only")
        sizes = {spec.size for spec in crops}
        if name == "wmse":
            if self.views.num_views < 2 or len(sizes) != 1:
                raise ValueError("wmse needs 2 or more views of one size (views.crops: count = positives per image)")
        elif self.views.num_views != 2 or len(sizes) != 1:
            raise ValueError(f"{name} needs exactly 2 views of one size (views.crops: one spec with count 2)")

    def _check_model(self) -> None:
        from raysl.models import is_resnet_family

        name = self.model.backbone
        if name == "small_cnn":
            return
        if self.model.stem == "cifar" and not is_resnet_family(name):
            raise ValueError(f"model.stem cifar is for the ResNet family (resnet*, resnext*, wide_resnet*); {name} "
                             f"keeps its own stem (model.stem: auto or imagenet)")
        if name.startswith("vit_"):
            sizes = {spec.size for spec in self.views.crops} | {self.eval_size}
            if name.startswith("vit_") and len(sizes) != 1:
                raise ValueError(f"{name} is built for one input size, but views.crops and evaluation.image_size give "
                                 f"{sorted(sizes)}: make them equal")

    def _check_method(self) -> None:
        method = self.method
        if isinstance(method, MoCoConfig):
            if method.name == "logo-moco":
                per_image = sum(spec.count for spec in self.views.crops if spec.role == "global")
                what = f"the global batch x {per_image} (every global view's keys are enqueued)"
            else:
                per_image = 2 if method.symmetric else 1
                what = "the global batch" + (" x 2 (symmetric: both views' keys are enqueued)" if per_image == 2 else "")
            enqueued = self.batch_size * per_image
            if method.queue_size % enqueued:
                raise ValueError(
                    f"method.queue_size {method.queue_size} must be a multiple of the keys enqueued per step: "
                    f"{what} = {enqueued}"
                )
            per_rank = self.batch_size // self.resources.workers
            if per_rank < 2 * method.shuffle_bn_groups:
                raise ValueError(
                    f"method.shuffle_bn_groups {method.shuffle_bn_groups} leaves fewer than 2 images per batch-norm "
                    f"group of a worker's batch ({per_rank} images)"
                )
        if isinstance(method, WMSEConfig):
            if method.w_size <= self.model.projector_out:
                raise ValueError(
                    f"method.w_size {method.w_size} must exceed the embedding dim model.projector_out "
                    f"{self.model.projector_out} (whitening needs a full-rank covariance; about 2x is safe)"
                )
            if self.batch_size % method.w_size:
                raise ValueError(f"method.w_size {method.w_size} must divide batch_size {self.batch_size}")

    def with_absolute_paths(self, cwd: str) -> RunConfig:
        """Local paths (data, pool, cache, label-map files) made absolute against `cwd`: Tune trials and Train
        workers run in their own working directories, so a relative path must be fixed where it was written."""
        def absolute(path: str | None) -> str | None:
            return path if path is None or "://" in path else os.path.join(cwd, os.path.expanduser(path))

        data = self.data.model_copy(update={
            "path": absolute(self.data.path), "source": absolute(self.data.source), "cache_dir": absolute(self.data.cache_dir),
            "pool": [entry.model_copy(update={"path": absolute(entry.path), "source": absolute(entry.source)})
                     for entry in self.data.pool],
        })
        label_sets = [absolute(spec) if spec.endswith((".yaml", ".yml")) or "/" in spec else spec
                      for spec in self.evaluation.label_sets]
        return self.model_copy(update={"data": data, "evaluation": self.evaluation.model_copy(update={"label_sets": label_sets}),
                                       "init_from": absolute(self.init_from)})

    def notes(self) -> list[str]:
        """Things allowed but worth a line in the log."""
        notes = []
        if self.method.name.startswith("logo-"):
            r_g = min(spec.scale[0] for spec in self.views.crops if spec.role == "global")
            r_l = max(spec.scale[1] for spec in self.views.crops if spec.role == "local")
            if r_l > r_g:
                notes.append(
                    f"note: local crops' scale upper bound r_l={r_l} exceeds the global crops' lower bound r_g={r_g}: "
                    "some local crops may be as large as global ones (allowed; LoGo assumes r_l <= r_g)"
                )
        return notes


# ----------------------------------------------------------------------------- sweep config


class SearchDistribution(Schema):
    """Exactly one of: choice / grid (lists of values), uniform / loguniform [low, high],
    randint [low, high) and qrandint [low, high, q] (high inclusive, as in Ray Tune)."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    """Draw one of these values at random."""
    grid: list[Any] | None = Field(default=None, min_length=1)
    """Every one of these values (a grid: every combination with the other grid keys)."""
    uniform: tuple[float, float] | None = None
    """A float drawn uniformly from [low, high]."""
    loguniform: tuple[Positive, Positive] | None = None
    """A float drawn log-uniformly from [low, high]."""
    randint: tuple[int, int] | None = None
    """An int drawn from [low, high) (high exclusive)."""
    qrandint: tuple[int, int, Annotated[int, Field(ge=1)]] | None = None
    """An int drawn from the multiples of q in [low, high] (high inclusive, except with q = 1, where Ray Tune
    excludes it as randint does)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDistribution:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice, grid, uniform, loguniform, randint, qrandint"
                + (f" (got {', '.join(given)})" if given else "")
            )
        kind = given[0]
        bounds = getattr(self, kind)
        if kind in ("uniform", "loguniform", "qrandint") and bounds[0] > bounds[1]:
            raise ValueError(f"{kind}: low {bounds[0]} exceeds high {bounds[1]}")
        if kind == "randint" and bounds[0] >= bounds[1]:
            raise ValueError(f"randint: low {bounds[0]} must be below high {bounds[1]} (high is exclusive)")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    def values_to_check(self) -> list[Any]:
        """Every value a search can draw (choice, grid) or its extremes (ranges)."""
        kind, args = self.kind, getattr(self, self.kind)
        if kind in ("choice", "grid"):
            return list(args)
        if kind == "randint":
            return [args[0], args[1] - 1]
        if kind == "qrandint":
            low = math.ceil(args[0] / args[2]) * args[2]
            high = math.floor(args[1] / args[2]) * args[2]
            return [low, high]
        return [args[0], args[1]]


class ASHAConfig(Schema):
    name: Literal["asha"] = "asha"
    max_t: Annotated[int, Field(ge=1)] | None = None
    """Most epochs a trial runs (None: base.epochs)."""
    grace_period: Annotated[int, Field(ge=1)] = 1
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0
    """ASHA keeps about 1 / reduction_factor of the trials at each rung."""


class FIFOConfig(Schema):
    name: Literal["fifo"] = "fifo"


# What Population Based Training may change in a running trial: values the loop takes from the config when it
# restarts from a checkpoint (the optimiser's lr and weight decay are set again, the method's attributes are
# built from the config). Not: shapes stored in the checkpoint (queue_size, widths) or the data pipeline.
PBT_MUTABLE = ("optimizer.lr", "optimizer.weight_decay", "method.temperature", "method.momentum", "method.ll_weight")


class PBTConfig(Schema):
    """Population Based Training (Ray Tune's): every `perturbation_interval` epochs a trial in the bottom
    `quantile_fraction` copies a top trial's checkpoint (exploit) and perturbs the `mutate` values (explore: x0.8
    or x1.2, or resampled; kept inside the search's ranges), taking effect from its next epoch."""

    name: Literal["pbt"] = "pbt"
    perturbation_interval: Annotated[int, Field(ge=1)] = 1
    """Epochs between a trial's exploit / explore decisions."""
    burn_in: Annotated[int, Field(ge=0)] = 0
    """Epochs before the first decision."""
    quantile_fraction: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    """The share of trials at the bottom that copy one of the same share at the top."""
    resample_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    """The chance a perturbed value is drawn again from its search distribution instead of scaled."""
    mutate: list[str] | None = None
    """The search keys PBT changes in running trials (None: every searched key it can change: optimizer.lr,
    optimizer.weight_decay, method.temperature, method.momentum, method.ll_weight)."""


SchedulerConfig = Annotated[Union[ASHAConfig, FIFOConfig, PBTConfig], Field(discriminator="name")]

# What a trial reports every epoch that a sweep can optimise (raysl.training.loop and the monitor), besides the
# per-set monitor figures knn_top1/<dataset>:<label set> and, after the last epoch only, the final evaluation's
# eval/<dataset>:<label set>/<budget>/<knn_top1|knn_top5|probe_top1|probe_top5>.
EPOCH_METRICS = {"knn_top1": "max", "loss": "min", "images_per_s": "max", "embedding_std": "max"}
FINAL_METRIC = re.compile(r"eval/[^/]+:[^/]+/[^/]+/(knn_top1|knn_top5|probe_top1|probe_top5)")

# The CPUs a trial's driver reserves: it only builds and watches a TorchTrainer; Tune rejects a zero-CPU trial.
DRIVER_CPUS = 0.1

# Fields that set where and how a run executes, not what it learns: never searched.
NOT_SEARCHABLE = ("resources", "storage_path", "name", "checkpoints_to_keep", "max_failures")


class SweepConfig(Schema):
    base: RunConfig = Field(default_factory=RunConfig)
    """The run config every trial starts from; `search` sets some of its keys per trial."""
    search: dict[str, SearchDistribution] = Field(default_factory=dict)
    """Dotted run-config keys (without `base.`) to the distribution each trial draws from."""
    scheduler: SchedulerConfig = Field(default_factory=ASHAConfig)
    """ASHA early stopping on `metric` (the kNN monitor's `knn_top1`), or fifo (every trial runs to the end)."""
    metric: str = "knn_top1"
    """What the sweep optimises, in one place: the scheduler's and the search's metric, the leaderboard's order
    and `best_config.yaml`'s trial. `knn_top1` (the kNN monitor), another figure every epoch reports (`loss`,
    `images_per_s`, `embedding_std`, `knn_top1/<dataset>:<label set>`), or a final evaluation's figure
    (`eval/<dataset>:<label set>/<budget>/probe_top1`, ...: reported after the last epoch only, so with
    scheduler fifo and `base.evaluation.final`). A trial scores its best value over the epochs."""
    mode: Literal["max", "min"] | None = None
    """Whether a higher or a lower `metric` is better (None: min for `loss`, else max)."""
    search_alg: Literal["random", "grid", "optuna"] = "random"
    """How trials' values are drawn: random (Ray Tune's variant generator: every combination of the grid keys,
    the other keys drawn at random, num_samples times), grid (every key a grid: the full product), or optuna
    (Optuna's TPE through Ray Tune's OptunaSearch, learning from finished trials; num_samples trials; choice and
    ranges, no grid)."""
    search_seed: int | None = None
    """Seed of the random draws (random) or of Optuna's sampler: the same seed draws the same values. None: fresh."""
    optuna_startup_trials: Annotated[int, Field(ge=1)] | None = None
    """search_alg optuna: how many trials TPE draws at random before its model of the finished trials draws the
    rest (Optuna's n_startup_trials). None: a quarter of num_samples, at least 2 and at most Optuna's default 10
    (with Optuna's own 10, a sweep of 10 trials or fewer would be random search)."""
    num_samples: Annotated[int, Field(ge=1)] = 1
    """Samples of the search space (each grid point is repeated num_samples times, as in Ray Tune)."""
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 2
    """At most this many trials run at the same time."""
    time_budget_minutes: Annotated[float, Field(gt=0)] | None = None
    """Stop every trial still running after this long (wall clock); the leaderboard keeps what they reached."""
    trial_retries: Annotated[int, Field(ge=0)] = 1
    """Times Tune restarts a trial whose driver died (its node lost); it resumes from its last checkpoint. A trial
    running its loop itself (resources.trial_loop auto) also gets base.max_failures more (Ray Train's restarts)."""
    storage_path: str = "./results"
    """Where the experiment goes (`<storage_path>/<name>`): a local path or an s3:// / gs:// URI; under `ray job
    submit`, use object storage or a shared absolute path."""
    name: str = "sweep"
    """The experiment's directory under `storage_path`; when that exists, a new sweep takes `<name>_2`,
    `<name>_3`, ... and `--resume` the newest of them."""
    _notes: list[str] = PrivateAttr(default_factory=list)
    """Notes (allowed but worth a log line) of the base and of every value the search can draw."""

    @property
    def notes(self) -> list[str]:
        return self._notes or self.base.notes()

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if isinstance(self.scheduler, ASHAConfig):
            max_t = self.scheduler.max_t or self.base.epochs
            if self.scheduler.grace_period > max_t:
                raise ValueError(f"scheduler.grace_period {self.scheduler.grace_period} exceeds max_t {max_t}")
        final = FINAL_METRIC.fullmatch(self.metric)
        if self.metric not in EPOCH_METRICS and not final and not self.metric.startswith("knn_top1/"):
            close = difflib.get_close_matches(self.metric, list(EPOCH_METRICS), n=1)
            raise ValueError(f"metric {self.metric!r}: not a figure trials report; use one of {', '.join(EPOCH_METRICS)}, "
                             "knn_top1/<dataset>:<label set> or eval/<dataset>:<label set>/<budget>/<knn_top1|probe_top1|...>"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        if isinstance(self.scheduler, PBTConfig):
            self._check_pbt(self.scheduler)
        if final and isinstance(self.scheduler, (ASHAConfig, PBTConfig)):
            raise ValueError(f"metric {self.metric}: the final evaluation reports it after the last epoch only, but "
                             f"{self.scheduler.name} compares trials while they run; use scheduler: {{name: fifo}} "
                             "(or metric knn_top1)")
        if final and not self.base.evaluation.final:
            raise ValueError(f"metric {self.metric}: a final evaluation figure, but base.evaluation.final is false")
        kinds = {key: distribution.kind for key, distribution in self.search.items()}
        if self.search_alg == "grid" and (ranges := [key for key, kind in kinds.items() if kind != "grid"]):
            raise ValueError(f"search_alg grid: search.{ranges[0]} is a {kinds[ranges[0]]}; a grid search takes grid "
                             "values for every key (or use search_alg random)")
        if self.search_alg == "optuna":
            if grids := [key for key, kind in kinds.items() if kind == "grid"]:
                raise ValueError(f"search_alg optuna: search.{grids[0]} is a grid; Optuna draws from distributions: "
                                 "give it as choice (or use search_alg random)")
            if not self.search:
                raise ValueError("search_alg optuna: search is empty; give Optuna keys to search")
        elif self.optuna_startup_trials is not None:
            raise ValueError(f"optuna_startup_trials: only for search_alg optuna (this sweep's is {self.search_alg})")
        return self

    @property
    def startup_trials(self) -> int:
        """search_alg optuna: the trials TPE draws at random first (optuna_startup_trials, or its default)."""
        return self.optuna_startup_trials or min(10, max(2, self.num_samples // 4))

    def _check_pbt(self, pbt: PBTConfig) -> None:
        mutate = self.pbt_keys
        for key in pbt.mutate or []:
            if key not in self.search:
                raise ValueError(f"scheduler.mutate: {key} is not searched; PBT perturbs searched keys (add search.{key})")
            if key not in PBT_MUTABLE:
                raise ValueError(f"scheduler.mutate: {key} cannot change in a running trial (its state is in the "
                                 f"checkpoint, or the data pipeline is built from it); PBT can change {', '.join(PBT_MUTABLE)}")
        if not mutate:
            raise ValueError(f"scheduler pbt: nothing to perturb; search one of {', '.join(PBT_MUTABLE)}")
        if not self.in_trial:
            raise ValueError("scheduler pbt: exploit copies a trial's checkpoint through Tune, which needs each trial's "
                             "loop in the trial (base.resources: workers 1, trial_loop auto, no train_on)")
        if self.search_alg == "optuna":
            raise ValueError("scheduler pbt: with search_alg optuna the values change under Optuna's model; use random")

    @property
    def pbt_keys(self) -> list[str]:
        """The searched keys PBT perturbs (scheduler pbt: mutate, else every searched key it can change)."""
        if not isinstance(self.scheduler, PBTConfig):
            return []
        return list(self.scheduler.mutate) if self.scheduler.mutate else [key for key in self.search if key in PBT_MUTABLE]

    @property
    def in_trial(self) -> bool:
        """Whether each trial runs its loop itself (one worker, resources.trial_loop auto, no train_on labels: a
        Tune trial cannot be placed by node labels), without a driver."""
        resources = self.base.resources
        return resources.workers == 1 and resources.trial_loop == "auto" and not resources.train_on

    @property
    def trial_resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) one running trial reserves: its driver (none when it runs the loop itself), its Train
        workers and its augmentation actors."""
        resources = self.base.resources
        cpus = (0.0 if self.in_trial else DRIVER_CPUS) + resources.workers * resources.cpus_per_worker
        return cpus + resources.data_actors * resources.data_cpus, resources.workers * resources.gpus_per_worker

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        return self.mode or EPOCH_METRICS.get(self.metric, "max")

    @property
    def trial_count(self) -> int:
        """Trials Tune will run: the grid's points times num_samples (Optuna: num_samples)."""
        if self.search_alg == "optuna":
            return self.num_samples
        return math.prod(len(d.grid) for d in self.search.values() if d.grid is not None) * self.num_samples

    @property
    def max_epochs(self) -> int:
        if isinstance(self.scheduler, ASHAConfig) and self.scheduler.max_t:
            return min(self.scheduler.max_t, self.base.epochs)
        return self.base.epochs


# ----------------------------------------------------------------------------- loading


def _format_location(location: tuple[Any, ...]) -> str:
    # pydantic puts union member tags into locations: a scheduler's ('asha') helps, so it stays; a
    # method's repeats method.name and is dropped (method.temperature, not method.simclr.temperature).
    parts = [str(part) for index, part in enumerate(location)
             if not (index and location[index - 1] == "method" and part in METHOD_CONFIGS)]
    return ".".join(parts)


def _validation_message(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for item in error.errors():
        field = _format_location(item["loc"])
        if prefix:
            field = f"{prefix}.{field}" if item["loc"] else prefix
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        if item["type"] == "union_tag_invalid":  # e.g. method.name: an unknown method
            field = f"{field}.{item['ctx']['discriminator'].strip(chr(39))}" if "'" in item["ctx"]["discriminator"] else f"{field}.name"
            message = f"unknown {item['ctx']['tag']!r}; choose one of {item['ctx']['expected_tags']}"
        # Cross-field rules (no location) name their fields in the message.
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every problem is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path}: the file is empty (expected a mapping of config fields)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of config fields, not a {type(data).__name__}")
    return data


def set_dotted(data: dict[str, Any], key: str, value: Any, *, source: str = "--set") -> None:
    """Set `a.b.c` (list items by index: `views.crops.0.size`) in nested dicts, creating mappings."""
    parts = key.split(".")
    if not key or any(part == "" for part in parts):
        raise UserError(f"{source}: '{key}' is not a dotted key")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{source}: {where}: no list item {part}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{source}: {where}: cannot set a field inside a {type(node).__name__}")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"{source}: {key}: no list item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"{source}: {key}: cannot set a field inside a {type(node).__name__}")


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """`key=value` strings (value parsed as YAML) into pairs."""
    pairs = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UserError(f"--set {item}: the value is not valid YAML ({error})") from None
        pairs.append((key.strip(), value))
    return pairs


def _apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value, source=f"--set {key}")
    return data


SMOKE_RUN = {
    "epochs": 1,
    "data.train_limit": 512,
    "evaluation.bank_limit": 1000,
    "evaluation.query_limit": 500,
    "schedule.warmup_epochs": 0,
}


def _smoke_run(data: dict[str, Any]) -> dict[str, Any]:
    for key, value in SMOKE_RUN.items():
        set_dotted(data, key, value, source="--smoke")
    batch = data.get("batch_size", RunConfig.model_fields["batch_size"].default)
    if isinstance(batch, int) and batch > 256:
        data["batch_size"] = 256
    return data


def config_data(source: str | os.PathLike | dict[str, Any] | BaseModel) -> dict[str, Any]:
    """A config's plain data from a YAML file's path, a dict (copied) or a config object (the Python API)."""
    if isinstance(source, BaseModel):
        return source.model_dump(mode="json")
    if isinstance(source, dict):
        return copy.deepcopy(source)
    return read_yaml(source)


def _name_of(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__} config>"


def load_run_config(source: str | os.PathLike | dict[str, Any] | BaseModel, overrides: list[str] | None = None,
                    smoke: bool = False) -> RunConfig:
    """A validated run config (with --set overrides, --smoke) from a file, a dict or a RunConfig."""
    path = _name_of(source)
    data = _apply_overrides(config_data(source), overrides)
    if smoke:
        data = _smoke_run(data)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{path}: invalid run config\n{_validation_message(error)}") from None


def load_sweep_config(source: str | os.PathLike | dict[str, Any] | BaseModel, overrides: list[str] | None = None,
                      smoke: bool = False) -> SweepConfig:
    """A validated sweep config (with --set overrides, --smoke) from a file, a dict or a SweepConfig."""
    path = _name_of(source)
    data = _apply_overrides(config_data(source), overrides)
    if smoke:
        base = data.get("base")
        if base is None or isinstance(base, dict):
            data["base"] = _smoke_run(dict(base or {}))
        data["num_samples"] = 1
        data["max_concurrent_trials"] = 2
        data["scheduler"] = {"name": "fifo"}
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as error:
        misplaced = [
            str(item["loc"][0]) for item in error.errors()
            if item["type"] == "extra_forbidden" and len(item["loc"]) == 1 and item["loc"][0] in RunConfig.model_fields
        ]
        hint = f"\n  ({', '.join(misplaced)}: run fields of a sweep go under base:, e.g. base.{misplaced[0]})" if misplaced else ""
        raise UserError(f"{path}: invalid sweep config\n{_validation_message(error)}{hint}") from None
    notes = check_search_space(sweep, str(path)) + rung_notes(sweep)
    if smoke:
        sweep = _smoke_search(sweep)
    sweep._notes = notes
    return sweep


def _smoke_search(sweep: SweepConfig) -> SweepConfig:
    """Two trials: the first two values of the first searched key (or two seeds when nothing is searched);
    with Optuna, two trials Optuna draws from the same distributions (its search runs as in the full sweep)."""
    if sweep.search_alg == "optuna":
        return sweep.model_copy(update={"num_samples": 2})
    search = {}
    if sweep.search:
        key, distribution = next(iter(sweep.search.items()))
        values = distribution.values_to_check()
        search[key] = SearchDistribution(grid=(values * 2)[:2])
    else:
        search["seed"] = SearchDistribution(grid=[sweep.base.seed, sweep.base.seed + 1])
    return sweep.model_copy(update={"search": search})


def _field_paths(data: Any, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.append(path)
            paths.extend(_field_paths(value, path))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            path = f"{prefix}.{index}"
            paths.append(path)
            paths.extend(_field_paths(value, path))
    return paths


MAX_COMBINATIONS = 4096


def legacy_stem(config: dict[str, Any]) -> dict[str, Any]:
    """A run config saved before model.stem existed (a checkpoint's): its resnet18 was always the CIFAR stem."""
    model = config.get("model")
    if isinstance(model, dict) and model.get("backbone") == "resnet18" and "stem" not in model:
        model["stem"] = "cifar"
    return config


def validated_run(data: dict[str, Any], heading: str) -> RunConfig:
    """RunConfig.model_validate(data); an invalid one is a UserError: `heading`, then a line per invalid field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{heading}\n{_validation_message(error)}") from None


def rung_notes(sweep: SweepConfig) -> list[str]:
    """A note when ASHA's rungs (grace_period x reduction_factor^k up to the last epoch) fall on epochs where the
    kNN monitor does not run (evaluation.every > 1): there ASHA compares the last measured figure (or NaN)."""
    every = sweep.base.evaluation.every
    if not isinstance(sweep.scheduler, ASHAConfig) or every == 1 or "evaluation.every" in sweep.search:
        return []
    last, rungs, rung = sweep.max_epochs, [], float(sweep.scheduler.grace_period)
    while rung < last:
        rungs.append(int(rung))
        rung *= sweep.scheduler.reduction_factor
    off = [rung for rung in rungs if rung % every]
    if not off:
        return []
    return [f"note: ASHA decides at epochs {', '.join(map(str, rungs))}, but evaluation.every {every} measures kNN at "
            f"epochs {every}, {2 * every}, ...: at {', '.join(map(str, off))} ASHA compares an older figure (NaN before "
            f"the first); make scheduler.grace_period a multiple of {every} with an integer reduction_factor"]


def check_search_space(sweep: SweepConfig, source: str) -> list[str]:
    """Every search key must name a run-config field, and every value the search can draw must validate.

    Values are checked per key and, where the product is small, in every combination of the keys'
    values / extremes (so cross-field rules see the values together). Returns the notes (RunConfig.notes)
    of the base and of those values, each with the values that raise it.
    """
    base_notes = sweep.base.notes()
    drawn_notes: dict[str, list[str]] = {}  # note -> the drawn values that raise it
    base = sweep.base.model_dump(mode="json")
    known = set(_field_paths(base))
    for key in sweep.search:
        field = f"search.{key}"
        if key.split(".")[0] in NOT_SEARCHABLE:
            raise UserError(f"{source}: {field}: '{key}' sets where a run executes, not what it learns; it cannot be searched")
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise UserError(f"{source}: {field}: names no config field{suggestion}")
        if isinstance(_lookup(base, key), (dict, list)) and sweep.search[key].kind not in ("choice", "grid"):
            raise UserError(f"{source}: {field}: is a section, not a number; search it with choice or grid")

    def check(assignment: dict[str, Any]) -> None:
        data = copy.deepcopy(base)
        for key, value in assignment.items():
            set_dotted(data, key, value, source=f"search.{key}")
        drawn = ", ".join(f"{key}={value!r}" for key, value in assignment.items())
        try:
            run = RunConfig.model_validate(data)
        except ValidationError as error:
            keys = ", ".join(f"search.{key}" for key in assignment)
            raise UserError(
                f"{source}: {keys}: the search can draw {drawn}, which the schema rejects:\n"
                f"{_validation_message(error, prefix='base')}"
            ) from None
        for note in run.notes():
            if note not in base_notes:
                drawn_notes.setdefault(note, []).append(drawn)

    candidates = {key: distribution.values_to_check() for key, distribution in sweep.search.items()}
    for key, values in candidates.items():
        for value in values:
            check({key: value})
    if len(candidates) > 1 and math.prod(len(values) for values in candidates.values()) <= MAX_COMBINATIONS:
        for combination in itertools.product(*candidates.values()):
            check(dict(zip(candidates, combination)))
    return base_notes + [
        f"{note} [the search can draw it, e.g. {draws[-1]}" + (f"; {len(draws)} checked draws do]" if len(draws) > 1 else "]")
        for note, draws in drawn_notes.items()
    ]


def _lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def apply_assignment(run: RunConfig, assignment: dict[str, Any]) -> RunConfig:
    """The run config of one trial: the base with the trial's drawn values set."""
    data = run.model_dump(mode="json")
    for key, value in assignment.items():
        set_dotted(data, key, value, source=f"search.{key}")
    return RunConfig.model_validate(data)


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def detect_file_kind(data: dict[str, Any]) -> Literal["sweep", "run"]:
    """A sweep file has a `base` or `search` section; anything else is a run config."""
    return "sweep" if ("base" in data or "search" in data or "scheduler" in data) else "run"
