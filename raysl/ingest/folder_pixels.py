"""An image folder decoded to one fixed-size pixel array per split (storage mode pixels).

Imports raysl.ingest.folder and raysl.ingest.source.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from raysl.errors import UserError
from raysl.ingest.folder import Candidate, plan_image_folder
from raysl.ingest.source import (
    IMAGE_EXTENSIONS,
    SourceData,
    SplitData,
    as_rgb,
    map_in_threads,
    refuse_skipped,
    to_uint8,
    user_path,
)
from raysl.io.storage import open_filesystem, read_path


@dataclass
class _Decoded:
    """One decoded image: uint8 pixels (H, W) for grayscale or (H, W, 3), its original mode, whether resized."""

    pixels: np.ndarray
    mode: str
    resized: bool


def read_image_folder(
    source: str, *, image_size: int | None, test_fraction: float, seed: int, unlabeled: bool,
    strict: bool, workers: int | None, progress: bool, classes_file: str | None = None,
) -> SourceData:
    """Decode every image under `source` into one uint8 array per split, all with one shape (layouts and
    `classes_file`: see `plan_image_folder`).

    Images are decoded with PIL, whatever their extension says; undecodable candidates are skipped (or,
    with `strict`, raise). Channels: C=1 when every kept image is grayscale (modes 1, L, LA, I, I;16, F, and
    palettes whose used colours are grey), else C=3 (RGB). Alpha is dropped (the stored colour is kept,
    not composited). 16-bit values are scaled to 8 bits (v / 257, so 65535 -> 255); float images in 0..1
    are scaled by 255, other float or int ranges are min-max normalised. With `image_size` every image is
    resized (squashed, not cropped) to image_size x image_size with antialiased bilinear filtering.
    Rows are shuffled within each split with `seed`, so a prefix of a split mixes all classes.
    """
    filesystem, root = open_filesystem(source)
    plan = plan_image_folder(source, unlabeled=unlabeled, classes_file=classes_file, workers=workers)
    candidates, skipped, unlabeled = plan.candidates, list(plan.skipped), plan.unlabeled
    if not candidates:
        raise UserError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {source}; "
                        "pass a folder of images (root/<class>/<image> or root/<image> for unlabeled)")
    decoded = map_in_threads(
        lambda candidate: _decode_image(filesystem, candidate.path, image_size), candidates,
        workers=workers, progress=progress, description="decoding images",
    )
    kept: list[tuple[Candidate, _Decoded]] = []
    for candidate, result in zip(candidates, decoded):
        if isinstance(result, str):
            skipped.append({"path": user_path(source, root, candidate.path), "reason": result})
        else:
            kept.append((candidate, result))
    skipped.sort(key=lambda entry: entry["path"])
    refuse_skipped(source, skipped, kept=len(kept), strict=strict)
    if image_size is None:
        _check_one_size(source, root, kept)
    grayscale = all(result.pixels.ndim == 2 for _, result in kept)
    final_mode = "L" if grayscale else "RGB"
    converted = sum(result.mode != final_mode or result.resized for _, result in kept)
    class_names = plan.class_names
    splits = _assemble_splits(kept, class_names, grayscale=grayscale, test_fraction=test_fraction, seed=seed,
                              unlabeled=unlabeled)
    return SourceData(splits, {"label": [] if unlabeled else class_names}, converted, skipped,
                      split_folders=plan.split_folders, notes=plan.notes)


def _assemble_splits(
    kept: list[tuple[Candidate, _Decoded]], class_names: list[str], *, grayscale: bool, test_fraction: float,
    seed: int, unlabeled: bool,
) -> dict[str, SplitData]:
    """Stack decoded images into splits: given splits as they are, the others split per class with `seed`
    (test_fraction of each class, at least one image left in train); rows shuffled with `seed`."""
    label_of = {name: index for index, name in enumerate(class_names)}
    rows: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    by_class: dict[int, list[np.ndarray]] = {}
    for candidate, result in kept:
        pixels = result.pixels[..., np.newaxis] if grayscale else as_rgb(result.pixels)
        label = label_of[candidate.class_name] if candidate.class_name is not None else -1
        if candidate.split is None:
            by_class.setdefault(label, []).append(pixels)
        else:
            rows[candidate.split].append((pixels, label))
    rng = np.random.default_rng(seed)
    for label in sorted(by_class):  # kept images of a class are in path order
        images = by_class[label]
        test_count = min(round(len(images) * test_fraction), max(len(images) - 1, 0))
        test_indices = set(rng.permutation(len(images))[:test_count].tolist())
        for index, pixels in enumerate(images):
            rows["test" if index in test_indices else "train"].append((pixels, label))
    shape = kept[0][1].pixels.shape[:2] + ((1,) if grayscale else (3,))
    splits = {}
    for split, split_rows in rows.items():
        if unlabeled and split == "test":
            continue
        order = rng.permutation(len(split_rows))
        images = np.empty((len(split_rows), *shape), np.uint8)
        for row, index in enumerate(order):
            images[row] = split_rows[index][0]
        labels = np.array([split_rows[index][1] for index in order], dtype=np.int64)
        splits[split] = SplitData(images, {"label": labels})
    return splits


def _decode_image(filesystem: pafs.FileSystem, path: str, image_size: int | None) -> _Decoded | str:
    """Decode one file into 8-bit pixels, or return why it cannot be used."""
    try:
        data = read_path(filesystem, path)
        if not data:
            return "empty file"
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            pixels = to_uint8(image)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not a recognised image format"
    except Exception as error:  # PIL reports bad data as OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(error).__name__}: {error}"
    resized = image_size is not None and pixels.shape[:2] != (image_size, image_size)
    if resized:
        pixels = np.asarray(Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return _Decoded(pixels, mode, resized)


def _check_one_size(source: str, root: str, kept: list[tuple[Candidate, _Decoded]]) -> None:
    examples: dict[tuple[int, int], str] = {}
    for candidate, result in kept:
        examples.setdefault(result.pixels.shape[:2], candidate.path)
    if len(examples) > 1:
        listed = "; ".join(f"{width}x{height} e.g. {user_path(source, root, path)}"
                           for (height, width), path in list(examples.items())[:5])
        raise UserError(f"images under {source} have {len(examples)} different sizes ({listed}); "
                        "rerun with --image-size N to resize them all to N x N, or with --mode encoded to keep each "
                        "image at its own size")
