"""A WebDataset source (.tar shards; a sample is the run of consecutive members sharing a key) planned and read.

Imports raysl.ingest.external.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator

import numpy as np

from raysl.errors import UserError
from raysl.ingest.external import ExternalPlan, Unit, finish_plan, list_inputs, source_split_of
from raysl.io.storage import join_uri

WDS_IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
WDS_LABEL_EXTENSIONS = ("cls", "json", "txt")


def _split_member(name: str) -> tuple[str, str] | None:
    """(key, extension) of a tar member in the WebDataset convention, or None for hidden members."""
    folder, _, base = name.rpartition("/")
    if base.startswith(".") or "." not in base:
        return None
    stem, extension = base.split(".", 1)
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def samples(tar: tarfile.TarFile, read_images: bool) -> Iterator[tuple[str, dict[str, bytes]]]:
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


def image_member(members: dict[str, bytes]) -> str | None:
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
                for key, members in samples(tar, read_images=False):
                    if image_member(members) is None:
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
    return finish_plan("webdataset", source, filesystem, units, names_hint=None, test_fraction=test_fraction,
                        seed=seed, unlabeled=unlabeled, skipped=skipped, notes=[])
