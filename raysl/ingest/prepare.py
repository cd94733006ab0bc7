"""`raysl prepare`: any source (idx, CIFAR, image folder, Parquet, WebDataset) to a prepared dataset, Parquet
shards plus manifest.json, in one of two storage modes: pixels (fixed-shape uint8 arrays) or encoded (the
image files' bytes, for variable-size photos). Writes to a `.partial-...` directory renamed into place.

Imports the source readers and writers of raysl.ingest, raysl.io and raysl.errors.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest import encoded
from raysl.ingest.dataset import ENCODED_KINDS, FORMAT_VERSION, KINDS, MODES
from raysl.ingest.folder import plan_image_folder
from raysl.ingest.source import IMAGE_EXTENSIONS, refuse_skipped
from raysl.ingest.write import (
    build_manifest,
    read_source,
    reset_dataset_dir,
    resolve_source,
    write_manifest,
    write_pixel_shards,
)
from raysl.io.storage import open_filesystem

DEFAULT_MAX_SIDE = encoded.DEFAULT_MAX_SIDE
DEFAULT_QUALITY = encoded.DEFAULT_QUALITY


def auto_folder_mode(source: str, *, seed: int = 0, workers: int | None = None, unlabeled: bool = False,
                     classes: str | None = None) -> tuple[str, str]:
    """(mode, why): the storage `--mode auto` gives an image folder, from the headers of a seeded sample of the
    files it would prepare (encoded.choose_folder_mode). Also what names an image folder's first-use cache."""
    plan = plan_image_folder(source, unlabeled=unlabeled, classes_file=classes, workers=workers)
    filesystem, _ = open_filesystem(source)
    return encoded.choose_folder_mode(filesystem, [candidate.path for candidate in plan.candidates], seed, workers)


def prepare(
    kind: str, source: str | None, out: str, *, image_size: int | None = None, test_fraction: float = 0.1,
    seed: int = 0, strict: bool = False, download: bool = False, workers: int | None = None,
    progress: bool = True, unlabeled: bool = False, mode: str = "auto", max_side: int | None = DEFAULT_MAX_SIDE,
    quality: int = DEFAULT_QUALITY, classes: str | None = None, image_column: str = "image",
    label_column: str = "label", shard_rows: int = encoded.SHARD_ROWS, shard_bytes: int = encoded.SHARD_BYTES,
    row_group_rows: int = encoded.ROW_GROUP_ROWS, shuffle_buffer: int | None = None, shown_out: str | None = None,
) -> dict:
    """Write Parquet shards + manifest.json under `out` (local path or pyarrow filesystem URI).

    `mode` picks the storage (see the module docstring for `auto`). Pixels: everything is read and checked
    before anything is written. Encoded: files stream through in bounded memory, one shard at a time; the
    manifest comes last (with `strict`, a skipped file fails the run after the shards, before the manifest).
    A previous dataset at `out` is replaced. `max_side` (default 512; 0 or None: no limit) and `quality`
    (JPEG quality of re-encoded lossy images, default 90) concern encoded storage; `classes` (a text file
    of class folder names) image folders; `image_column`/`label_column` Parquet sources; `shard_rows`,
    `shard_bytes`, `row_group_rows` and `shuffle_buffer` (Parquet/WebDataset) the encoded shard layout.
    `test_fraction` and `seed` split sources without a held-out split (per class, seeded); `strict`
    makes any skipped file an error. Returns the manifest dict and prints one summary line, naming
    `shown_out` (default `out`): where the dataset will be when the caller renames `out` into place.
    """
    if kind not in KINDS:
        raise UserError(f"unknown dataset kind {kind!r}; choose one of {', '.join(KINDS)}")
    if mode not in MODES:
        raise UserError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    if image_size is not None and image_size < 1:
        raise UserError(f"--image-size must be a positive number of pixels, got {image_size}")
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if max_side is not None and max_side < 0:
        raise UserError(f"--max-side must be a number of pixels (0: no limit), got {max_side}")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality must be a JPEG quality in 1..100, got {quality}")
    if classes is not None and kind != "image-folder":
        raise UserError("--classes is for image-folder sources only")
    if min(shard_rows, shard_bytes, row_group_rows) < 1:
        raise UserError("shard_rows, shard_bytes and row_group_rows must be positive")
    max_side = max_side or None
    if kind in ENCODED_KINDS:
        if mode == "pixels" or image_size is not None:
            raise UserError(f"{kind} sources are stored encoded; --mode pixels and --image-size are not available")
        mode, why = "encoded", f"{kind} sources are always encoded"
    elif kind != "image-folder":
        if mode == "encoded":
            raise UserError(f"{kind} is stored as fixed-shape pixels; --mode encoded is for image-folder, parquet "
                            "and webdataset sources")
        mode, why = "pixels", f"{kind} is always pixels"
    elif image_size is not None:
        if mode == "encoded":
            raise UserError("--image-size resizes every image to one shape (pixels); drop it for --mode encoded, "
                            "or use --max-side to bound the long side of encoded images")
        mode, why = "pixels", f"--image-size {image_size}"
    elif mode != "auto":
        why = f"--mode {mode}"
    else:
        mode, why = auto_folder_mode(resolve_source(kind, source, download), seed=seed, workers=workers,
                                     unlabeled=unlabeled, classes=classes)
    if mode == "encoded":
        return _prepare_encoded(
            kind, source, out, why=why, test_fraction=test_fraction, seed=seed, strict=strict, workers=workers,
            progress=progress, unlabeled=unlabeled, max_side=max_side, quality=quality, classes=classes,
            image_column=image_column, label_column=label_column, shard_rows=shard_rows, shard_bytes=shard_bytes,
            row_group_rows=row_group_rows, shuffle_buffer=shuffle_buffer, shown_out=shown_out or out,
        )
    source = resolve_source(kind, source, download)
    source, data = read_source(kind, source, download, image_size=image_size, test_fraction=test_fraction,
                                seed=seed, unlabeled=unlabeled, strict=strict, workers=workers, progress=progress,
                                classes=classes)
    kept = sum(len(split.images) for split in data.splits.values())
    if kept == 0:
        raise UserError(f"{kind}: no images found in {source}; nothing was written. Check SRC")
    manifest = build_manifest(kind, source, data)
    manifest["mode_reason"] = why
    write_pixel_shards(out, data, manifest)
    print(f"prepared {kind} (pixels {'x'.join(map(str, manifest['image_shape']))}; {why}): kept {kept} "
          f"(converted {data.converted}), skipped {len(data.skipped)} -> {shown_out or out}{_notes_text(data.notes)}")
    return manifest


def _notes_text(notes: list[str]) -> str:
    return "".join(f"; {note}" for note in notes)


def _prepare_encoded(
    kind: str, source: str | None, out: str, *, why: str, test_fraction: float, seed: int, strict: bool,
    workers: int | None, progress: bool, unlabeled: bool, max_side: int | None, quality: int, classes: str | None,
    image_column: str, label_column: str, shard_rows: int, shard_bytes: int, row_group_rows: int,
    shuffle_buffer: int | None, shown_out: str,
) -> dict:
    """The encoded path: plan (paths / a label pass only), then stream the items through write_encoded."""
    from raysl.ingest.external import SHUFFLE_BUFFER
    from raysl.ingest.external_stream import external_items
    from raysl.ingest.parquet import plan_parquet
    from raysl.ingest.webdataset import plan_webdataset

    if not source:
        raise UserError(f"{kind} needs SRC: the " + ("folder holding the images" if kind == "image-folder"
                                                       else f"directory (or glob) of {kind} files"))
    source_filesystem, source_root = open_filesystem(source)
    if kind == "image-folder":
        plan = plan_image_folder(source, unlabeled=unlabeled, classes_file=classes, workers=workers)
        if not plan.candidates:
            raise UserError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}; "
                            "pass a folder of images (root/<class>/<image> or root/<image> for unlabeled)")
        items, _ = encoded.folder_items(plan, source, source_root, test_fraction=test_fraction, seed=seed)
        total, class_names, is_unlabeled = len(items), plan.class_names, plan.unlabeled
        split_folders, notes, skipped = plan.split_folders, list(plan.notes), list(plan.skipped)
    else:
        if kind == "parquet":
            external_plan = plan_parquet(source, image_column=image_column, label_column=label_column,
                                                  test_fraction=test_fraction, seed=seed, unlabeled=unlabeled)
        else:
            external_plan = plan_webdataset(source, test_fraction=test_fraction, seed=seed, unlabeled=unlabeled)
        source_filesystem = external_plan.filesystem
        items = external_items(external_plan, source, seed=seed,
                                        shuffle_buffer=shuffle_buffer or SHUFFLE_BUFFER)
        total, class_names, is_unlabeled = external_plan.total, external_plan.class_names, external_plan.unlabeled
        split_folders, notes, skipped = external_plan.split_folders, list(external_plan.notes), list(external_plan.skipped)
        if total == 0:
            raise UserError(f"{kind}: no rows with images in {source}; nothing was written. Check SRC")
    if strict and skipped:
        refuse_skipped(source, skipped, kept=total, strict=strict)
    splits = ("train",) if is_unlabeled else ("train", "test")
    filesystem, path = open_filesystem(out)
    reset_dataset_dir(filesystem, path)
    result = encoded.write_encoded(
        path, filesystem, items, splits=splits, class_names=class_names, total=total, max_side=max_side,
        quality=quality, workers=workers, progress=progress, shard_rows=shard_rows, shard_bytes=shard_bytes,
        row_group_rows=row_group_rows, source_filesystem=source_filesystem,
    )
    skipped = sorted(skipped + result.skipped, key=lambda entry: entry["path"])
    if result.kept == 0 or (strict and skipped):
        for split in splits:  # shards of a failed run: not a dataset (there is no manifest either)
            if filesystem.get_file_info(f"{path}/{split}").type == pafs.FileType.Directory:
                filesystem.delete_dir(f"{path}/{split}")
    refuse_skipped(source, skipped, kept=result.kept, strict=strict, written="no dataset was written")
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": str(source),
        "storage": "encoded",
        "mode_reason": why,
        "image_shape": None,
        "channels": result.channels,
        "max_side": max_side,
        "quality": quality,
        "sizes": result.sizes,
        "class_names": list(class_names),
        "class_ids": {name: index for index, name in enumerate(class_names)},
        "label_sets": {"label": list(class_names)},
        "split_folders": split_folders,
        "splits": result.splits,
        "mean": result.mean,
        "std": result.std,
        "kept": result.kept,
        "converted": result.converted,
        "skipped": skipped,
        "notes": notes,
        "files": result.files,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_manifest(filesystem, path, manifest)
    sizes = result.sizes
    print(f"prepared {kind} (encoded, max side {max_side or 'unlimited'}, JPEG quality {quality}; {why}): "
          f"kept {result.kept} (converted {result.converted}), skipped {len(skipped)}, "
          f"{sizes['width'][0]}-{sizes['width'][2]} x {sizes['height'][0]}-{sizes['height'][2]} px -> {shown_out}"
          f"{_notes_text(notes)}")
    return manifest
