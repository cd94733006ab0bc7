"""Schema, the base of every config section (unknown keys are errors), and the field types sections share.

Imports nothing of raysl.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder")


DatasetKind = Literal["fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder"]


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


Positive = Annotated[float, Field(gt=0.0)]


class Schema(BaseModel):
    """Base of every config section: unknown keys are errors, at any depth. The string under a field is its
    description (pydantic's use_attribute_docstrings): docs/configuration-reference.md is made from them."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)
