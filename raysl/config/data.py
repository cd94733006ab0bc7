"""The `data` section: which dataset, its subsets, corruptions and pools (the data conditions of a study).

Imports raysl.config.base only.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from raysl.config.base import DatasetKind, Fraction, Schema


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
