"""`raysl prepare`: turn a raw dataset into Parquet shards + manifest.json, and read them back.

Layout under OUT (a local path or a pyarrow filesystem URI such as s3://, gs://, file://):

    manifest.json
    train/part-00000.parquet, part-00001.parquet, ...
    test/part-00000.parquet, ...                        (absent for unlabeled datasets)

Two storages, recorded as the manifest's `storage` (a manifest without it is "pixels"):

- "pixels" (idx, CIFAR, image folders with --image-size or of small equal-size images): `image` (binary: raw
  uint8 pixels, H x W x C in C order, one shape per dataset: `image_shape`), `label` (int64, -1 when
  unlabeled), `index` (int64, row number within the split); CIFAR-100 adds `label_coarse`. About 10,000
  rows a shard.
- "encoded" (image folders otherwise, Parquet and WebDataset sources): `image` (binary: a JPEG/PNG/WebP
  file, RGB or L, upright), `width`, `height` (int32, as stored), `label`, `index`; `image_shape` is null,
  `max_side`, `quality` and `sizes` ({"width"/"height": [min, median, max]}) describe the images. See
  raysl.data.encoded. Shards hold at most 10,000 rows or about 64 MB of images, in row groups of 256 rows.

Every manifest also has `channels` (1 or 3), `class_names` (index = label id), `class_ids` ({name: id}),
`split_folders` (which source folders became train/test, which were ignored), `mean`/`std` (per channel,
train split, 0..1) and `files` (per shard: bytes, sha256, rows, row groups; see raysl.data.shards).
manifest.json is written last, so a directory without it is never a finished dataset.

Mode choice (`--mode auto`, the default): idx and CIFAR are always pixels; Parquet and WebDataset sources
always encoded; an image folder with --image-size is pixels; an image folder without it is pixels when
the headers of a seeded sample of 256 of its images all give one size whose long side is <= 64 px, else
encoded. Parquet and WebDataset sources are converted by `prepare` (a copy) rather than read in place as
`data.path`; reading them in place is not offered: see docs/performance.md (bring existing data).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from raysl.data import encoded
from raysl.data.download import default_download_dir, download_source
from raysl.data.shards import describe_file, read_table
from raysl.data.sources import (
    IMAGE_EXTENSIONS, SourceData, SplitData, plan_image_folder, read_cifar_source, read_idx_source,
    read_image_folder, resize_all,
)
from raysl.errors import UserError
from raysl.storage import join_uri, open_filesystem, read_path

KINDS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "image-folder", "parquet", "webdataset")
ENCODED_KINDS = ("parquet", "webdataset")  # prepare-only sources: run configs cannot name them
MODES = ("auto", "encoded", "pixels")
DEFAULT_MAX_SIDE = encoded.DEFAULT_MAX_SIDE
DEFAULT_QUALITY = encoded.DEFAULT_QUALITY
DEFAULT_SOURCES = {"fashion-mnist": "/usr/share/datasets/fashion-mnist"}  # Debian package dataset-fashion-mnist
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ROWS_PER_SHARD = 10_000
MAX_SHARD_BYTES = 512 * 2**20  # fewer rows per shard for large images


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
        plan = plan_image_folder(_resolve_source(kind, source, download), unlabeled=unlabeled, classes_file=classes,
                                 workers=workers)
        source_filesystem, _ = open_filesystem(source)
        mode, why = encoded.choose_folder_mode(source_filesystem, [c.path for c in plan.candidates], seed, workers)
    if mode == "encoded":
        return _prepare_encoded(
            kind, source, out, why=why, test_fraction=test_fraction, seed=seed, strict=strict, workers=workers,
            progress=progress, unlabeled=unlabeled, max_side=max_side, quality=quality, classes=classes,
            image_column=image_column, label_column=label_column, shard_rows=shard_rows, shard_bytes=shard_bytes,
            row_group_rows=row_group_rows, shuffle_buffer=shuffle_buffer, shown_out=shown_out or out,
        )
    source = _resolve_source(kind, source, download)
    source, data = _read_source(kind, source, download, image_size=image_size, test_fraction=test_fraction,
                                seed=seed, unlabeled=unlabeled, strict=strict, workers=workers, progress=progress,
                                classes=classes)
    kept = sum(len(split.images) for split in data.splits.values())
    if kept == 0:
        raise UserError(f"{kind}: no images found in {source}; nothing was written. Check SRC")
    manifest = _build_manifest(kind, source, data)
    manifest["mode_reason"] = why
    _write(out, data, manifest)
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
    from raysl.data import external

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
            external_plan = external.plan_parquet(source, image_column=image_column, label_column=label_column,
                                                  test_fraction=test_fraction, seed=seed, unlabeled=unlabeled)
        else:
            external_plan = external.plan_webdataset(source, test_fraction=test_fraction, seed=seed, unlabeled=unlabeled)
        source_filesystem = external_plan.filesystem
        items = external.external_items(external_plan, source, seed=seed,
                                        shuffle_buffer=shuffle_buffer or external.SHUFFLE_BUFFER)
        total, class_names, is_unlabeled = external_plan.total, external_plan.class_names, external_plan.unlabeled
        split_folders, notes, skipped = external_plan.split_folders, list(external_plan.notes), list(external_plan.skipped)
        if total == 0:
            raise UserError(f"{kind}: no rows with images in {source}; nothing was written. Check SRC")
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) under {source} could not be used; nothing was written. "
                        "Fix or remove them, or rerun without --strict to skip them:\n"
                        + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in skipped))
    splits = ("train",) if is_unlabeled else ("train", "test")
    filesystem, path = open_filesystem(out)
    _clear(filesystem, path)
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
    if result.kept == 0:
        raise UserError(f"no decodable images in {source}: all {len(skipped)} failed, e.g. "
                        + "; ".join(f"{entry['path']}: {entry['reason']}" for entry in skipped[:5]))
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) under {source} could not be used; no dataset was "
                        "written. Fix or remove them, or rerun without --strict to skip them:\n"
                        + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in skipped[:50]))
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
    _write_manifest(filesystem, path, manifest)
    sizes = result.sizes
    print(f"prepared {kind} (encoded, max side {max_side or 'unlimited'}, JPEG quality {quality}; {why}): "
          f"kept {result.kept} (converted {result.converted}), skipped {len(skipped)}, "
          f"{sizes['width'][0]}-{sizes['width'][2]} x {sizes['height'][0]}-{sizes['height'][2]} px -> {shown_out}"
          f"{_notes_text(notes)}")
    return manifest


def read_manifest(uri: str) -> dict:
    """The manifest.json of a prepared dataset."""
    filesystem, path = open_filesystem(uri)
    if not _has_manifest(filesystem, path):
        raise UserError(f"no prepared dataset at {uri} ({MANIFEST_NAME} missing); "
                        f"create it with `raysl prepare KIND [SRC] --out {uri}`")
    try:
        manifest = json.loads(read_path(filesystem, f"{path}/{MANIFEST_NAME}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(
            f"{join_uri(uri, MANIFEST_NAME)} is not valid JSON ({error}); prepare the dataset again"
        ) from error
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{join_uri(uri, MANIFEST_NAME)} has format_version {manifest.get('format_version')!r}, "
                        f"this raysl reads {FORMAT_VERSION}; prepare the dataset again with this version")
    return manifest


def split_files(uri: str, split: str) -> list[str]:
    """The Parquet shard paths/URIs of a split (what Ray Data's read_parquet will be given)."""
    return [join_uri(uri, shard) for shard in _split_entry(read_manifest(uri), uri, split)["shards"]]


def load_split(
    uri: str, split: str, limit: int | None = None, label_column: str = "label"
) -> tuple[np.ndarray, np.ndarray]:
    """Read a prepared split into memory: images uint8 (N, H, W, C), labels int64 (N,) (-1 where unlabeled)
    of `label_column`. With `limit`, only the first `limit` rows (and only the shards holding them) are read."""
    manifest = read_manifest(uri)
    if manifest.get("storage", "pixels") != "pixels":
        raise UserError(f"{uri} is an encoded dataset (variable-size image files, no fixed image_shape): "
                        "load_split reads fixed-shape pixel datasets only; decode with raysl.data.decode")
    shape = tuple(manifest["image_shape"])
    filesystem, path = open_filesystem(uri)
    images, labels, count = [], [], 0
    for shard in _split_entry(manifest, uri, split)["shards"]:
        if limit is not None and count >= limit:
            break
        table = read_table(filesystem, f"{path}/{shard}", ["image", label_column], uri=uri, shard=shard,
                           manifest=manifest)
        if limit is not None:
            table = table.slice(0, limit - count)
        images.append(_pixels(table.column("image"), shape))
        labels.append(table.column(label_column).to_numpy().astype(np.int64))
        count += table.num_rows
    if not images:
        return np.empty((0, *shape), np.uint8), np.empty(0, np.int64)
    return np.concatenate(images), np.concatenate(labels)


def load_labels(uri: str, split: str, column: str = "label") -> np.ndarray:
    """One label column of a prepared split, int64 (N,), without reading the images (rows.split_labels)."""
    from raysl.data.rows import split_labels

    return split_labels(uri, read_manifest(uri), split, [column])[column]


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
    if _has_manifest(filesystem, target_path):
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
        if not _has_manifest(filesystem, target_path):  # else another process finished first: keep its copy
            if filesystem.get_file_info(target_path).type != pafs.FileType.NotFound:
                filesystem.delete_dir(target_path)  # a half-written leftover
            filesystem.move(temporary_path, target_path)
    except OSError:
        if not _has_manifest(filesystem, target_path):  # not a lost race with another process
            raise
    finally:
        if filesystem.get_file_info(temporary_path).type != pafs.FileType.NotFound:
            filesystem.delete_dir(temporary_path)
    log(f"dataset ready at {target}")
    return target


def _folder_mode(source: str, image_size: int | None) -> str:
    """The storage `prepare` gives an image folder with its defaults (--mode auto, seed 0): pixels with
    --image-size, else what the auto rule resolves from the folder's sampled headers."""
    if image_size is not None:
        return "pixels"
    plan = plan_image_folder(source)
    filesystem, _ = open_filesystem(source)
    return encoded.choose_folder_mode(filesystem, [candidate.path for candidate in plan.candidates], 0, None)[0]


# ---------------------------------------------------------------------------------------------- reading


def _resolve_source(kind: str, source: str | None, download: bool) -> str:
    """SRC, or the kind's default source, or (with --download) the download cache directory."""
    if kind in ("image-folder", *ENCODED_KINDS):
        if not source:
            what = "the folder holding the images (root/<class>/<image>)" if kind == "image-folder" else \
                f"the directory (or glob) of its {'.parquet' if kind == 'parquet' else '.tar'} files"
            raise UserError(f"{kind} needs SRC: {what}")
        if download:
            raise UserError(f"--download is not available for {kind}; pass the files as SRC")
        return source
    if source:
        return source
    if kind in DEFAULT_SOURCES:
        return DEFAULT_SOURCES[kind]
    if download:
        return default_download_dir(kind)
    raise UserError(f"{kind} needs SRC: the directory holding its raw files; "
                    f"or use --download to fetch them into {default_download_dir(kind)}")


def _read_source(kind: str, source: str, download: bool, **options) -> tuple[str, SourceData]:
    """(where it was read from, the raw dataset); with `download`, fetch it first when missing or corrupt."""
    try:
        return source, _read_source_once(kind, source, **options)
    except UserError:
        if not download:
            raise
    if source == DEFAULT_SOURCES.get(kind):  # a system directory: download into the cache instead
        source = default_download_dir(kind)
    download_source(kind, source)
    return source, _read_source_once(kind, source, **options)


def _read_source_once(
    kind: str, source: str, *, image_size: int | None, test_fraction: float, seed: int, unlabeled: bool,
    strict: bool, workers: int | None, progress: bool, classes: str | None = None,
) -> SourceData:
    if kind == "image-folder":
        return read_image_folder(source, image_size=image_size, test_fraction=test_fraction, seed=seed,
                                 unlabeled=unlabeled, strict=strict, workers=workers, progress=progress,
                                 classes_file=classes)
    data = read_idx_source(kind, source) if kind in ("fashion-mnist", "mnist") else read_cifar_source(kind, source)
    if image_size is not None and data.splits["train"].images.shape[1:3] != (image_size, image_size):
        for split in data.splits.values():
            split.images = resize_all(split.images, image_size, workers=workers, progress=progress)
            data.converted += len(split.images)
    return data


# ---------------------------------------------------------------------------------------------- writing


def _build_manifest(kind: str, source: str, data: SourceData) -> dict:
    class_names = data.label_sets["label"]
    train_images = data.splits["train"].images
    mean, std = _channel_stats(train_images)
    rows_per_shard = _rows_per_shard(train_images.shape[1:])
    splits = {}
    for name, split in data.splits.items():
        labels = split.labels["label"]
        counts = np.bincount(labels[labels >= 0], minlength=len(class_names)) if len(class_names) else []
        shard_count = max(1, -(-len(labels) // rows_per_shard))
        splits[name] = {
            "count": int(len(labels)),
            "class_counts": {class_name: int(count) for class_name, count in zip(class_names, counts)},
            "shards": [f"{name}/part-{index:05d}.parquet" for index in range(shard_count)],
        }
    height, width = (int(size) for size in train_images.shape[1:3])
    return {
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "source": str(source),
        "storage": "pixels",
        "image_shape": [int(size) for size in train_images.shape[1:]],
        "channels": int(train_images.shape[3]),
        "max_side": None,
        "quality": None,
        "sizes": {"width": [width] * 3, "height": [height] * 3},
        "class_names": list(class_names),
        "class_ids": {name: index for index, name in enumerate(class_names)},
        "split_folders": data.split_folders,
        "notes": list(data.notes),
        "label_sets": {column: list(names) for column, names in data.label_sets.items()},
        "splits": splits,
        "mean": mean,
        "std": std,
        "kept": sum(split["count"] for split in splits.values()),
        "converted": int(data.converted),
        "skipped": list(data.skipped),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the pixels in 0..1, exact, from 256-bin histograms (no float copy)."""
    channels = images.shape[-1]
    histograms = np.zeros((channels, 256), np.int64)
    for start in range(0, len(images), ROWS_PER_SHARD):
        chunk = images[start:start + ROWS_PER_SHARD]
        for channel in range(channels):
            histograms[channel] += np.bincount(chunk[..., channel].ravel(), minlength=256)
    values = np.arange(256) / 255.0
    totals = np.maximum(histograms.sum(axis=1), 1)
    mean = histograms @ values / totals
    variance = histograms @ values**2 / totals - mean**2
    return [float(m) for m in mean], [float(s) for s in np.sqrt(np.maximum(variance, 0.0))]


def _rows_per_shard(image_shape: tuple[int, ...]) -> int:
    return max(1, min(ROWS_PER_SHARD, MAX_SHARD_BYTES // int(np.prod(image_shape))))


def _write(out: str, data: SourceData, manifest: dict) -> None:
    """Replace any dataset at `out` with these shards, then write the manifest (last)."""
    filesystem, path = open_filesystem(out)
    _clear(filesystem, path)
    rows_per_shard = _rows_per_shard(manifest["image_shape"])
    files = {}
    for name, split in data.splits.items():
        filesystem.create_dir(f"{path}/{name}", recursive=True)
        for number, shard in enumerate(manifest["splits"][name]["shards"]):
            start = number * rows_per_shard
            pq.write_table(_shard_table(split, start, start + rows_per_shard), f"{path}/{shard}", filesystem=filesystem,
                           write_page_checksum=True)
            files[shard] = describe_file(filesystem, f"{path}/{shard}")
    manifest["files"] = files
    _write_manifest(filesystem, path, manifest)


def _clear(filesystem: pafs.FileSystem, path: str) -> None:
    """Create `path` and remove a previous dataset there (its manifest first, then its split folders)."""
    filesystem.create_dir(path, recursive=True)
    for stale in (f"{path}/{MANIFEST_NAME}", *(f"{path}/{split}" for split in ("train", "test"))):
        info = filesystem.get_file_info(stale)
        if info.type == pafs.FileType.File:
            filesystem.delete_file(stale)
        elif info.type == pafs.FileType.Directory:
            filesystem.delete_dir(stale)


def _write_manifest(filesystem: pafs.FileSystem, path: str, manifest: dict) -> None:
    with filesystem.open_output_stream(f"{path}/{MANIFEST_NAME}") as stream:
        stream.write(json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8"))


def _shard_table(split: SplitData, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a split as an Arrow table; the image column shares the pixel buffer."""
    images = np.ascontiguousarray(split.images[start:stop])
    count, item_size = len(images), int(np.prod(images.shape[1:]))
    offsets = np.arange(count + 1, dtype=np.int32) * item_size
    image_column = pa.Array.from_buffers(pa.binary(), count, [None, pa.py_buffer(offsets), pa.py_buffer(images)])
    columns = {"image": image_column, "label": pa.array(split.labels["label"][start:stop], pa.int64()),
               "index": pa.array(np.arange(start, start + count, dtype=np.int64))}
    for column, labels in split.labels.items():
        if column != "label":
            columns[column] = pa.array(labels[start:stop], pa.int64())
    return pa.table(columns)


def _pixels(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """A binary column of equal-size images as uint8 (N, *shape), without a per-row Python loop."""
    images = []
    for chunk in column.chunks:
        if len(chunk) == 0:
            continue
        offsets = np.frombuffer(chunk.buffers()[1], np.int32)[chunk.offset:chunk.offset + len(chunk) + 1]
        data = np.frombuffer(chunk.buffers()[2], np.uint8)[offsets[0]:offsets[-1]]
        if data.size != len(chunk) * int(np.prod(shape)):
            raise UserError(f"a shard's images do not match image_shape {list(shape)}; prepare the dataset again")
        images.append(data.reshape(len(chunk), *shape))
    return np.concatenate(images) if images else np.empty((0, *shape), np.uint8)


def _has_manifest(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(f"{path}/{MANIFEST_NAME}").type == pafs.FileType.File


def _split_entry(manifest: dict, uri: str, split: str) -> dict:
    if split not in manifest["splits"]:
        raise UserError(f"{uri} has no {split!r} split (it has {', '.join(manifest['splits'])}); "
                        "an unlabeled image folder has only 'train'")
    return manifest["splits"][split]
