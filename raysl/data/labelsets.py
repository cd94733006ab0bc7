"""Label sets: which labels an evaluation scores against (granularity). A label column of the prepared
dataset (`label`; CIFAR-100 adds `label_coarse`), or a label-map file grouping the `label` classes.

A label-map file is YAML:

    name: fashion-mnist-4          # what metrics call the set (default: the file's stem)
    groups:                        # group -> the classes of `label` it holds; every class exactly once
      tops: [T-shirt/top, Pullover, Dress, Coat, Shirt]
      ...

Shipped maps live in raysl/labelmaps/ and are named without the path (evaluation.label_sets: [label, fashion-mnist-4]).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from raysl.errors import UserError

SHIPPED = Path(__file__).resolve().parents[1] / "labelmaps"


@dataclass(frozen=True)
class LabelSet:
    """`column`'s labels, through `mapping` (class index -> group index) when it is a label map."""

    name: str
    column: str
    class_names: tuple[str, ...]
    mapping: tuple[int, ...] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """The column's labels in this set (-1, unlabelled, stays -1)."""
        if self.mapping is None:
            return labels
        table = np.asarray(self.mapping, np.int64)
        return np.where(labels >= 0, table[np.clip(labels, 0, None)], -1)


def shipped_maps() -> list[str]:
    return sorted(path.stem for path in SHIPPED.glob("*.yaml"))


def resolve_label_set(spec: str, manifest: dict, field: str = "evaluation.label_sets") -> LabelSet:
    """The label set `spec` names for a prepared dataset (its manifest); a UserError naming the field or
    the map file when it does not fit the dataset."""
    columns = manifest.get("label_sets") or {"label": manifest["class_names"]}
    if spec in columns:
        return LabelSet(spec, spec, tuple(columns[spec]))
    path = SHIPPED / f"{spec}.yaml" if (SHIPPED / f"{spec}.yaml").is_file() else Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"{field}: {spec!r} is neither a label column of this dataset ({', '.join(columns)}), a shipped label map "
            f"({', '.join(shipped_maps())}) nor a label-map file"
        )
    return load_label_map(path, list(manifest["class_names"]))


def load_label_map(path: str | Path, class_names: list[str]) -> LabelSet:
    """Read and check a label-map file against the dataset's classes: every class in exactly one group."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({error})") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, dict) or not groups:
        raise UserError(f"{path}: expected a mapping with `groups:` (group name -> list of class names)")
    owner: dict[str, str] = {}
    problems = []
    for group, members in groups.items():
        if not isinstance(members, list) or not members:
            problems.append(f"group {group!r} must list at least one class")
            continue
        for member in members:
            member = str(member)
            if member not in class_names:
                hint = difflib.get_close_matches(member, class_names, n=1)
                problems.append(f"group {group!r}: {member!r} is not a class of the dataset"
                                + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            elif member in owner:
                problems.append(f"class {member!r} is mapped twice ({owner[member]!r} and {group!r})")
            else:
                owner[member] = str(group)
    missing = [name for name in class_names if name not in owner]
    if missing:
        problems.append(f"classes mapped to no group: {', '.join(repr(name) for name in missing)}")
    if problems:
        raise UserError(f"{path}: every class must be mapped exactly once:\n  " + "\n  ".join(problems))
    group_names = [str(group) for group in groups]
    mapping = tuple(group_names.index(owner[name]) for name in class_names)
    return LabelSet(str(data.get("name") or path.stem), "label", tuple(group_names), mapping)
