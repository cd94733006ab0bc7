"""RunConfig: one pretraining run (what `raysl train` takes and a sweep's `base` is), with its cross-field rules.

Imports the section modules of raysl.config.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, model_validator

from raysl.config.base import Schema
from raysl.config.data import DataConfig
from raysl.config.model import MethodConfig, MoCoConfig, ModelConfig, SimCLRConfig, WMSEConfig, is_resnet_family
from raysl.config.training import EvaluationConfig, OptimizerConfig, ResourcesConfig, ScheduleConfig, ViewsConfig


class RunConfig(Schema):
    """One pretraining run: what `raysl train` takes and what a sweep's `base` holds."""

    _smoke_note: str | None = PrivateAttr(default=None)  # set by load_run_config(smoke=True, machine=...)

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
        """Things allowed but worth a line in the log (first, how --smoke fitted the run to this machine)."""
        notes = [self._smoke_note] if self._smoke_note else []
        if self.method.name.startswith("logo-"):
            r_g = min(spec.scale[0] for spec in self.views.crops if spec.role == "global")
            r_l = max(spec.scale[1] for spec in self.views.crops if spec.role == "local")
            if r_l > r_g:
                notes.append(
                    f"note: local crops' scale upper bound r_l={r_l} exceeds the global crops' lower bound r_g={r_g}: "
                    "some local crops may be as large as global ones (allowed; LoGo assumes r_l <= r_g)"
                )
        return notes
