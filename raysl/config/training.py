"""How a run trains and is measured: optimizer, schedule, views (crop specs), probe, evaluation, resources.

Imports raysl.config.base only.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import AfterValidator, Field, model_validator

from raysl.config.base import Fraction, Positive, Schema


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
