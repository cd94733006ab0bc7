"""What Parquet and WebDataset sources share: the plan (units: one source file each, its split and labels), listing a
source's files, assigning splits and class ids.

Parquet: SRC is a directory or glob of .parquet files (Hugging Face's layout included); WebDataset: a directory
or glob of .tar shards. Splits come from a file's path (a folder named, or a name starting with, train / val /
validation / test), else test_fraction of each class goes to test (seeded). Both readers make a cheap first pass
over the labels only to fix class names, counts and the test split.

Imports raysl.ingest.encoded, raysl.ingest.folder, raysl.io and raysl.errors.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.folder import HELD_OUT_ORDER, SPLIT_FOLDER_NAMES
from raysl.io.storage import open_filesystem

SHUFFLE_BUFFER = 1024
SPLIT_PREFIX = re.compile(r"^(train|validation|val|test)(?=[-_.]|$)", re.IGNORECASE)


@dataclass
class Unit:
    """One source file: its path, its path relative to SRC, the source split name (train/val/...) or None,
    and from the first pass the raw label of each row/sample (ints, -1 none; or strings, None none)."""

    path: str
    relative: str
    source_split: str | None
    raw_labels: list | np.ndarray = field(default_factory=list)
    labels: np.ndarray | None = None  # final label ids
    to_test: np.ndarray | None = None  # with a seeded split: which rows go to test
    split: str | None = None  # raysl split, when the whole file goes to one


@dataclass
class ExternalPlan:
    """What the first pass found: the units in visiting order, class names, splits, counts and notes."""

    kind: str
    filesystem: pafs.FileSystem
    units: list[Unit]
    class_names: list[str]
    unlabeled: bool
    split_folders: dict
    total: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    image_column: str = "image"
    label_column: str = "label"


def list_inputs(source: str, suffix: str) -> tuple[pafs.FileSystem, str, list[tuple[str, str]]]:
    """(filesystem, root, [(path, path relative to root)]) of the files ending in `suffix` under the
    directory `source` (recursively, hidden entries left out), or matching the glob `source`, or `source`."""
    glob = any(character in source for character in "*?[")
    base_uri = source
    pattern = None
    if glob:
        head = re.split(r"[*?\[]", source, maxsplit=1)[0]
        base_uri = head.rsplit("/", 1)[0] if "/" in head else "."
        pattern = source[len(base_uri):].lstrip("/")
    filesystem, root = open_filesystem(base_uri)
    info = filesystem.get_file_info(root)
    if info.type == pafs.FileType.File and not glob:
        return filesystem, root.rsplit("/", 1)[0], [(root, info.base_name)]
    if info.type != pafs.FileType.Directory:
        raise UserError(f"{source} does not exist; pass a directory (or glob) of {suffix} files as SRC")
    found = []
    for entry in filesystem.get_file_info(pafs.FileSelector(root, recursive=True)):
        relative = entry.path[len(root):].lstrip("/")
        if entry.type != pafs.FileType.File or any(part.startswith(".") for part in relative.split("/")):
            continue
        if pattern is not None and not fnmatch.fnmatch(relative, pattern):
            continue
        if relative.lower().endswith(suffix):
            found.append((entry.path, relative))
    if not found:
        raise UserError(f"no {suffix} files {'match' if glob else 'under'} {source}; "
                        f"pass a directory (or glob) of {suffix} files as SRC")
    return filesystem, root, sorted(found, key=lambda pair: pair[1])


def source_split_of(relative: str) -> str | None:
    """train/val/validation/test from a folder name in the path or the file name's prefix, else None."""
    *folders, name = relative.split("/")
    for folder in folders:
        if folder.lower() in SPLIT_FOLDER_NAMES:
            return folder.lower()
    match = SPLIT_PREFIX.match(name)
    return match.group(1).lower() if match else None


def _assign_splits(plan_units: list[Unit], source: str, *, labelled: dict[str, bool], test_fraction: float, seed: int,
                   unlabeled: bool) -> tuple[dict, list[str], bool]:
    """Set each unit's raysl split (or, with no split names, its to_test rows); returns
    (split_folders, notes, unlabeled)."""
    notes: list[str] = []
    present = sorted({unit.source_split for unit in plan_units if unit.source_split})
    split_folders: dict = {"train": None, "test": None, "ignored": []}
    if present:
        if "train" not in present:
            raise UserError(f"{source}: files are named for split(s) {', '.join(present)} but none for train; "
                            "name the training files train-*.parquet / train-*.tar (or put them in a train/ folder)")
        split_folders["train"] = "train"
        test = None
        for name in HELD_OUT_ORDER:
            if name not in present:
                continue
            if test is None and labelled.get(name) and not unlabeled:
                test = name
                continue
            split_folders["ignored"].append(name)
            notes.append(f"held-out split {name} ignored" + (
                "" if test else " (its rows carry no labels: not usable as the labelled test split)"))
        split_folders["test"] = test
        unnamed = [unit.relative for unit in plan_units if unit.source_split is None]
        if unnamed:
            notes.append(f"{len(unnamed)} file(s) named for no split ignored, e.g. {unnamed[0]}")
        for unit in plan_units:
            unit.split = {"train": "train", test: "test"}.get(unit.source_split) if unit.source_split else None
        return split_folders, notes, unlabeled or not labelled.get("train")
    if unlabeled or not labelled.get(None):
        for unit in plan_units:
            unit.split = "train"
        return split_folders, notes, True
    # one seeded split per class over all rows, as for image folders
    rng = np.random.default_rng(seed)
    all_labels = np.concatenate([unit.labels for unit in plan_units]) if plan_units else np.empty(0, np.int64)
    to_test = np.zeros(len(all_labels), bool)
    for label in np.unique(all_labels):
        rows = np.flatnonzero(all_labels == label)
        test_count = min(round(len(rows) * test_fraction), max(len(rows) - 1, 0))
        to_test[rows[rng.permutation(len(rows))[:test_count]]] = True
    start = 0
    for unit in plan_units:
        unit.to_test = to_test[start:start + len(unit.labels)]
        start += len(unit.labels)
    return split_folders, notes, False


def _class_names_and_ids(units: list[Unit], names_hint: list[str] | None) -> list[str]:
    """Turn raw labels into ids (unit.labels); the class names, index = id."""
    kinds = {("str" if isinstance(unit.raw_labels, list) else "int") for unit in units if len(unit.raw_labels)}
    if kinds == {"str"} or kinds == {"str", "int"}:
        names = sorted({str(label) for unit in units for label in _iter_raw(unit.raw_labels) if label is not None
                        and not (isinstance(label, (int, np.integer)) and label < 0)})
        ids = {name: index for index, name in enumerate(names)}
        for unit in units:
            unit.labels = np.array([ids[str(label)] if label is not None and not (
                isinstance(label, (int, np.integer)) and label < 0) else -1 for label in _iter_raw(unit.raw_labels)],
                np.int64)
        return names
    maximum = -1
    for unit in units:
        unit.labels = np.asarray(unit.raw_labels, np.int64).reshape(-1)
        if len(unit.labels):
            maximum = max(maximum, int(unit.labels.max()))
    if names_hint and len(names_hint) > maximum:
        return list(names_hint)
    return [str(index) for index in range(maximum + 1)]


def _iter_raw(raw) -> Iterator:
    return iter(raw.tolist() if isinstance(raw, np.ndarray) else raw)


def finish_plan(kind: str, source: str, filesystem, units: list[Unit], *, names_hint, test_fraction, seed,
                 unlabeled, skipped, notes, **columns) -> ExternalPlan:
    class_names = _class_names_and_ids(units, names_hint)
    labelled: dict = {}
    for unit in units:
        has = bool(len(unit.labels) and (unit.labels >= 0).any())
        labelled[unit.source_split] = labelled.get(unit.source_split, False) or has
    split_folders, split_notes, unlabeled = _assign_splits(units, source, labelled=labelled,
                                                          test_fraction=test_fraction, seed=seed, unlabeled=unlabeled)
    if unlabeled:  # train only
        class_names = []
        for unit in units:
            unit.labels = np.full(len(unit.labels), -1, np.int64)
            unit.to_test = None
            if unit.split == "test":
                unit.split = None
    used = [unit for unit in units if unit.split is not None or unit.to_test is not None]
    rng = np.random.default_rng(seed)
    used = [used[index] for index in rng.permutation(len(used)).tolist()]
    total = sum(len(unit.labels) for unit in used)
    return ExternalPlan(kind, filesystem, used, class_names, unlabeled, split_folders, total, skipped,
                        notes + split_notes, **columns)
