"""A dataset prepared on first use: `data.kind`/`data.source` resolved to a cache directory keyed by what was
prepared (kind, size, storage mode, source), prepared there once.

Imports raysl.ingest.prepare, raysl.ingest.dataset, raysl.io.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable

import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.dataset import KINDS, has_manifest
from raysl.ingest.prepare import auto_folder_mode, prepare
from raysl.ingest.write import DEFAULT_SOURCES
from raysl.io.storage import join_uri, open_filesystem


def ensure_prepared(
    kind: str, source: str | None, cache_dir: str, *, image_size: int | None = None,
    log: Callable[[str], object] = print,
) -> str:
    """Return the URI of a prepared copy of a known KIND under cache_dir, preparing it on first use.

    The copy lives at `<cache_dir>/<kind>[-<size>]` (image folders add their resolved storage mode, pixels or
    encoded, and a hash of SRC: a copy stored under one mode is never reused for the other, e.g. after the
    auto rule changed; the other kinds have one mode each) and is reused whenever its manifest exists. On a local cache_dir it is prepared into a temporary sibling and
    renamed into place, so a killed prepare never leaves a half dataset that looks done; on object
    stores (no atomic rename) it is prepared in place, where the manifest, written last, marks it done.
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "image-folder" and not source:
        raise UserError("image-folder needs SRC: the folder holding the images")
    name = kind if image_size is None else f"{kind}-{image_size}"
    if kind == "image-folder":
        name += f"-{_folder_mode(source, image_size)}-" + hashlib.sha1(str(source).encode()).hexdigest()[:8]
    target = join_uri(cache_dir, name)
    filesystem, target_path = open_filesystem(target)
    if has_manifest(filesystem, target_path):
        return target
    log(f"preparing {kind} from {source or DEFAULT_SOURCES.get(kind, 'its default source')} into {target} (first use)")
    if not isinstance(filesystem, pafs.LocalFileSystem):
        filesystem.delete_dir_contents(target_path, missing_dir_ok=True)
        prepare(kind, source, target, image_size=image_size)
        return target
    temporary = join_uri(cache_dir, f".{name}.partial-{uuid.uuid4().hex[:12]}")
    _, temporary_path = open_filesystem(temporary)
    try:
        prepare(kind, source, temporary, image_size=image_size, shown_out=target)  # renamed to target below
        if not has_manifest(filesystem, target_path):  # else another process finished first: keep its copy
            if filesystem.get_file_info(target_path).type != pafs.FileType.NotFound:
                filesystem.delete_dir(target_path)  # a half-written leftover
            filesystem.move(temporary_path, target_path)
    except OSError:
        if not has_manifest(filesystem, target_path):  # not a lost race with another process
            raise
    finally:
        if filesystem.get_file_info(temporary_path).type != pafs.FileType.NotFound:
            filesystem.delete_dir(temporary_path)
    log(f"dataset ready at {target}")
    return target


def _folder_mode(source: str, image_size: int | None) -> str:
    """The storage `prepare` gives an image folder with its defaults (--mode auto, seed 0): pixels with
    --image-size, else what the auto rule resolves from the folder's sampled headers."""
    return "pixels" if image_size is not None else auto_folder_mode(source)[0]
