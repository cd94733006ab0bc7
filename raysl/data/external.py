"""Existing encoded datasets as `raysl prepare` sources: Parquet files of image bytes and WebDataset tar shards.

`raysl prepare parquet SRC --out URI [--image-column image --label-column label]` and
`raysl prepare webdataset SRC --out URI` convert them (a copy) into raysl's encoded layout: the same
verify/re-encode step and shard writer as image folders, the same manifest. Reading them in place is not
offered: see docs/performance.md (bring existing data).

Parquet: SRC is a directory (searched recursively) or a glob of .parquet files. The image column holds the
encoded file bytes, either as binary or as a struct with fields `bytes` and `path` (the Hugging Face hub
layout, e.g. ImageNet-1k). The label column holds ints (null: unlabeled; class names from the hub's
ClassLabel metadata when present, else "0", "1", ...) or strings (class names, sorted; id = position).
Files are read a row-group batch at a time (pq.ParquetFile.iter_batches), so memory stays bounded.

WebDataset: SRC is a directory or a glob of .tar shards; a sample is the run of consecutive members sharing
a key (the member name up to the first dot of its base name); its image is the .jpg/.jpeg/.png/.webp
member, its label a .cls (an int as text), a .json with a "label" field, or a .txt (an int, else a class
name). Tars are read with Python's tarfile, streaming.

Splits: a file whose path has a folder named, or whose name starts with, train/val/validation/test (e.g. the
hub's data/train-00000-of-00257.parquet, data/validation-...) belongs to that split; the train files are
raysl's train split, the first of val, validation, test whose rows carry labels is raysl's test split, a
further one is ignored. With no split names at all, every row is train and test_fraction of each class goes
to test (seeded). Order: whole files are visited in a seeded order (each read in order, a row group or a
tar member at a time) and rows mixed by a
seeded shuffle buffer of `shuffle_buffer` rows per split (not a full shuffle: the source order only shows
within a window that large).

Both readers make a cheap first pass over the labels only (the Parquet label column; the tar members'
headers and label members, skipping image data) to fix class names, counts and the test split.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.data.encoded import Item
from raysl.data.sources import HELD_OUT_ORDER, SPLIT_FOLDER_NAMES
from raysl.errors import UserError
from raysl.storage import join_uri, open_filesystem

SHUFFLE_BUFFER = 1024
WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
WDS_LABEL_EXTENSIONS = ("cls", "json", "txt")
SPLIT_PREFIX = re.compile(r"^(train|validation|val|test)(?=[-_.]|$)", re.IGNORECASE)
PARQUET_BATCH_ROWS = 64


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


# ---------------------------------------------------------------------------------------------- planning


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


def _finish_plan(kind: str, source: str, filesystem, units: list[Unit], *, names_hint, test_fraction, seed,
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


def plan_parquet(source: str, *, image_column: str = "image", label_column: str = "label", test_fraction: float,
                 seed: int, unlabeled: bool = False) -> ExternalPlan:
    """First pass over Parquet files: schema checks and the label column (no image bytes are read)."""
    filesystem, _, files = list_inputs(source, ".parquet")
    units, names_hint, notes = [], None, []
    for path, relative in files:
        shown = join_uri(source, relative) if not any(c in source for c in "*?[") else relative
        try:
            parquet = pq.ParquetFile(path, filesystem=filesystem)
        except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ...
            raise UserError(f"{shown} is not a readable Parquet file ({error}); replace or remove it") from error
        schema = parquet.schema_arrow
        if image_column not in schema.names:
            raise UserError(f"{shown} has no column {image_column!r} (it has {', '.join(schema.names)}); "
                            "name the image column with --image-column")
        image_type = schema.field(image_column).type
        if not (pa.types.is_binary(image_type) or pa.types.is_large_binary(image_type) or (
                pa.types.is_struct(image_type) and image_type.get_field_index("bytes") >= 0)):
            raise UserError(f"{shown}: column {image_column!r} is {image_type}, expected binary (encoded image "
                            "bytes) or a struct with a `bytes` field (the Hugging Face layout)")
        unit = Unit(path, relative, source_split_of(relative))
        if label_column in schema.names:
            label_type = schema.field(label_column).type
            column = parquet.read(columns=[label_column]).column(0)
            if pa.types.is_integer(label_type):
                unit.raw_labels = column.fill_null(-1).to_numpy().astype(np.int64)
            elif pa.types.is_string(label_type) or pa.types.is_large_string(label_type):
                unit.raw_labels = column.to_pylist()
            else:
                raise UserError(f"{shown}: column {label_column!r} is {label_type}, expected int or string labels; "
                                "name the label column with --label-column")
            names_hint = names_hint or _hub_class_names(schema, label_column)
        else:
            unit.raw_labels = np.full(parquet.metadata.num_rows, -1, np.int64)
            if not notes:
                notes.append(f"no {label_column!r} column in {shown} (and maybe others): its rows are unlabeled")
        units.append(unit)
    return _finish_plan("parquet", source, filesystem, units, names_hint=names_hint, test_fraction=test_fraction,
                        seed=seed, unlabeled=unlabeled, skipped=[], notes=notes, image_column=image_column,
                        label_column=label_column)


def _hub_class_names(schema: pa.Schema, label_column: str) -> list[str] | None:
    """The ClassLabel names the Hugging Face hub stores in the schema metadata, if any."""
    try:
        info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        feature = info.get("info", {}).get("features", {}).get(label_column, {})
        names = feature.get("names")
        return [str(name) for name in names] if isinstance(names, list) and names else None
    except (ValueError, AttributeError):
        return None


def _split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member in the WebDataset convention, or None for hidden members."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def _samples(tar: tarfile.TarFile, read_images: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; image members are read only with `read_images`."""
    key, members = None, {}
    for member in tar:
        if not member.isfile():
            continue
        split = _split_member(member.name)
        if split is None:
            continue
        member_key, extension = split
        if member_key != key:
            if key is not None:
                yield key, members
            key, members = member_key, {}
        if extension in WDS_LABEL_EXTENSIONS or (read_images and extension in WDS_IMAGE_EXTENSIONS):
            members[extension] = tar.extractfile(member).read()
        elif extension in WDS_IMAGE_EXTENSIONS:
            members[extension] = b""
    if key is not None:
        yield key, members


def _wds_label(members: dict[str, bytes], where: str) -> int | str | None:
    if "cls" in members:
        text = members["cls"].decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise UserError(f"{where}.cls holds {text[:40]!r}, expected an integer class id") from None
    if "json" in members:
        try:
            label = json.loads(members["json"]).get("label")
        except (ValueError, AttributeError):
            label = None
        return label if isinstance(label, (int, str)) else None
    if "txt" in members:
        text = members["txt"].decode("utf-8", "replace").strip()
        return int(text) if re.fullmatch(r"-?\d+", text) else (text or None)
    return None


def _image_member(members: dict[str, bytes]) -> str | None:
    return next((extension for extension in WDS_IMAGE_EXTENSIONS if extension in members), None)


def plan_webdataset(source: str, *, test_fraction: float, seed: int, unlabeled: bool = False) -> ExternalPlan:
    """First pass over tar shards: member headers and label members (image data is skipped over)."""
    filesystem, _, files = list_inputs(source, ".tar")
    units, skipped = [], []
    for path, relative in files:
        unit = Unit(path, relative, source_split_of(relative))
        labels = []
        try:
            with filesystem.open_input_file(path) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
                for key, members in _samples(tar, read_images=False):
                    if _image_member(members) is None:
                        skipped.append({"path": f"{join_uri(source, relative)}:{key}",
                                        "reason": "no .jpg/.jpeg/.png/.webp member in the sample"})
                        continue
                    labels.append(_wds_label(members, f"{join_uri(source, relative)}:{key}"))
        except tarfile.TarError as error:
            raise UserError(f"{join_uri(source, relative)} is not a readable tar file ({error}); "
                            "replace or remove it") from error
        if any(isinstance(label, str) for label in labels):
            unit.raw_labels = labels
        else:
            unit.raw_labels = np.array([-1 if label is None else label for label in labels], np.int64)
        units.append(unit)
    return _finish_plan("webdataset", source, filesystem, units, names_hint=None, test_fraction=test_fraction,
                        seed=seed, unlabeled=unlabeled, skipped=skipped, notes=[])


# ---------------------------------------------------------------------------------------------- streaming


def _unit_rows(plan: ExternalPlan, unit: Unit, source: str) -> Iterator[tuple[int, bytes | None, str]]:
    """(row number, image bytes or None, key) for each row/sample of a unit, streaming."""
    shown = join_uri(source, unit.relative)
    if plan.kind == "parquet":
        parquet = pq.ParquetFile(unit.path, filesystem=plan.filesystem)
        row = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[plan.image_column]):
            column = batch.column(0)
            paths = None
            if pa.types.is_struct(column.type):
                if column.type.get_field_index("path") >= 0:
                    paths = column.field("path").to_pylist()
                column = column.field("bytes")
            for index, data in enumerate(column.to_pylist()):
                name = f"{shown} row {row}" + (f" ({paths[index]})" if paths and paths[index] else "")
                yield row, data, name
                row += 1
        return
    with plan.filesystem.open_input_stream(unit.path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        row = 0
        for key, members in _samples(tar, read_images=True):
            extension = _image_member(members)
            if extension is None:
                continue  # reported by the first pass
            yield row, members[extension], f"{shown}:{key}.{extension}"
            row += 1


def external_items(plan: ExternalPlan, source: str, *, seed: int, shuffle_buffer: int = SHUFFLE_BUFFER) -> Iterator[Item]:
    """The plan's rows as Items, streaming: units in the plan's (seeded) order, rows mixed by a seeded shuffle
    buffer of `shuffle_buffer` rows per split."""
    rng = np.random.default_rng([seed, 1])
    buffers: dict[str, list[Item]] = {"train": [], "test": []}
    for unit in plan.units:
        for row, data, key in _unit_rows(plan, unit, source):
            if row >= len(unit.labels):
                raise UserError(f"{join_uri(source, unit.relative)} changed while being read; prepare again")
            split = unit.split or ("test" if unit.to_test[row] else "train")
            item = Item(split, int(unit.labels[row]), key, data=data if data is not None else b"")
            buffer = buffers[split]
            if len(buffer) < shuffle_buffer:
                buffer.append(item)
                continue
            index = int(rng.integers(len(buffer)))
            buffer[index], item = item, buffer[index]
            yield item
    for buffer in buffers.values():
        for index in rng.permutation(len(buffer)).tolist():
            yield buffer[index]
        buffer.clear()
