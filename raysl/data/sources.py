"""Readers that turn each supported source into in-memory uint8 arrays: idx (MNIST-style), CIFAR pickles,
image folders. Every reader reads through a pyarrow filesystem, so SRC may be a local path or a URI."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from raysl.errors import UserError
from raysl.storage import is_dir, is_file, join_uri, open_filesystem, read_path

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
GRAYSCALE_MODES = frozenset({"1", "L", "LA", "La", "I", "F"}) | SIXTEEN_BIT_MODES


@dataclass
class SplitData:
    """One split in memory: images uint8 (N, H, W, C) and label columns (name -> int64 (N,), always "label")."""

    images: np.ndarray
    labels: dict[str, np.ndarray]


@dataclass
class SourceData:
    """What a reader returns: the splits, the class names of each label column, and conversion bookkeeping."""

    splits: dict[str, SplitData]
    label_sets: dict[str, list[str]]
    converted: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    split_folders: dict | None = None  # image folders: which source folders became the splits
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- idx (MNIST)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx_source(kind: str, source: str) -> SourceData:
    """Read the four idx files (each plain or .gz) of MNIST or Fashion-MNIST from the directory `source`."""
    filesystem, directory = open_filesystem(source)
    found: dict[str, str | None] = {}
    for name in (name for pair in IDX_FILES.values() for name in pair):
        paths = (f"{directory}/{name}", f"{directory}/{name}.gz")
        found[name] = next((path for path in paths if is_file(filesystem, path)), None)
    missing = [name for name, path in found.items() if path is None]
    if missing:
        if kind == "fashion-mnist":
            how = ("On Debian/Ubuntu `apt-get install dataset-fashion-mnist` installs them in "
                   "/usr/share/datasets/fashion-mnist; or rerun with --download")
        else:
            how = "Rerun with --download, or fetch them from https://ossci-datasets.s3.amazonaws.com/mnist/"
        raise UserError(
            f"{kind}: missing {', '.join(missing)} (plain or .gz) in {source}. {how}; "
            "or pass the directory holding the four idx files as SRC"
        )
    splits = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = _read_idx(filesystem, found[images_name], ndim=3)
        labels = _read_idx(filesystem, found[labels_name], ndim=1).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{found[images_name]} has {len(images)} images but {found[labels_name]} has {len(labels)} "
                            "labels; the files do not belong together: replace them with a matching set")
        if len(labels) and labels.max() > 9:
            raise UserError(f"{found[labels_name]} has label {labels.max()}, expected 0..9: "
                            f"the file is not {kind} labels; download it again")
        splits[split] = SplitData(images[..., np.newaxis], {"label": labels})
    names = FASHION_MNIST_CLASSES if kind == "fashion-mnist" else MNIST_CLASSES
    return SourceData(splits, {"label": list(names)})


def _read_idx(filesystem: pafs.FileSystem, path: str, ndim: int) -> np.ndarray:
    """Parse one idx file of unsigned bytes with `ndim` dimensions (magic 0x0000 08 ndim, big-endian sizes)."""
    raw = read_path(filesystem, path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path} is a corrupt gzip file ({error}); download it again") from error
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise UserError(f"{path} is not an idx file of {ndim}-d unsigned bytes (bad magic number {raw[:4].hex()}); "
                        "download it again")
    shape = tuple(int(size) for size in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=header)
    if data.size != np.prod(shape):
        raise UserError(f"{path} holds {data.size} bytes of data but its header says {shape}: "
                        "the file is truncated or corrupt; download it again")
    return data.reshape(shape)


# ---------------------------------------------------------------------------------------------- CIFAR

CIFAR_LAYOUTS = {
    # kind: (extracted folder, train files, test files, meta file, archive URL)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta",
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta",
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts, lists, numpy arrays) and refuses any other global, so a
    tampered pickle cannot run code."""

    ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_source(kind: str, source: str) -> SourceData:
    """Read CIFAR-10 / CIFAR-100 python batches from `source` (the extracted folder or its parent).
    CIFAR-100 keeps fine labels as "label" and coarse labels as "label_coarse"."""
    folder, train_files, test_files, meta_file, url = CIFAR_LAYOUTS[kind]
    filesystem, path = open_filesystem(source)
    directory = next((d for d in (path, f"{path}/{folder}") if is_file(filesystem, f"{d}/{meta_file}")), None)
    if directory is None:
        expected = ", ".join([meta_file, *train_files, *test_files])
        raise UserError(
            f"{kind}: no python batches in {source} or {join_uri(source, folder)} (expected {expected}). "
            f"Download {url} and extract it there (`tar xzf {url.rsplit('/', 1)[1]}`), or rerun with --download"
        )
    meta = _load_pickle(filesystem, f"{directory}/{meta_file}")
    label_keys = {"label": "labels"} if kind == "cifar10" else {"label": "fine_labels", "label_coarse": "coarse_labels"}
    name_keys = {"label": "label_names"} if kind == "cifar10" else {"label": "fine_label_names",
                                                                       "label_coarse": "coarse_label_names"}
    label_sets = {column: [_text(name) for name in meta[key]] for column, key in name_keys.items()}
    splits = {}
    for split, files in (("train", train_files), ("test", test_files)):
        images, labels = [], {column: [] for column in label_keys}
        for file in files:
            batch = _load_pickle(filesystem, f"{directory}/{file}")
            data = np.asarray(batch["data"], dtype=np.uint8)
            if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
                raise UserError(f"{directory}/{file}: data has shape {data.shape}, expected (N, 3072); "
                                "the batch is corrupt: download the archive again")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            for column, key in label_keys.items():
                labels[column].append(np.asarray(batch[key], dtype=np.int64))
        splits[split] = SplitData(np.ascontiguousarray(np.concatenate(images)),
                                  {column: np.concatenate(values) for column, values in labels.items()})
    return SourceData(splits, label_sets)


def _load_pickle(filesystem: pafs.FileSystem, path: str) -> dict:
    """A CIFAR pickle as a dict with str keys (the originals are Python 2 pickles with bytes keys)."""
    if not is_file(filesystem, path):
        raise UserError(f"missing {path}; extract the CIFAR archive again (or rerun with --download)")
    try:
        loaded = _NumpyOnlyUnpickler(io.BytesIO(read_path(filesystem, path)), encoding="bytes").load()
    except Exception as error:  # truncated or foreign pickles raise many types
        raise UserError(f"{path} is not a readable CIFAR pickle ({error}); extract the archive again") from error
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, expected a CIFAR batch dict; "
                        "extract the archive again")
    return {_text(key): value for key, value in loaded.items()}


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


# ---------------------------------------------------------------------------------------------- image folders


@dataclass
class _Candidate:
    """One image file to decode: where it is, which split it goes to (None: seeded split) and its class."""

    path: str
    split: str | None
    class_name: str | None


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
    decoded = _map_in_threads(
        lambda candidate: _decode_image(filesystem, candidate.path, image_size), candidates,
        workers=workers, progress=progress, description="decoding images",
    )
    kept: list[tuple[_Candidate, _Decoded]] = []
    for candidate, result in zip(candidates, decoded):
        if isinstance(result, str):
            skipped.append({"path": _user_path(source, root, candidate.path), "reason": result})
        else:
            kept.append((candidate, result))
    skipped.sort(key=lambda entry: entry["path"])
    if not kept:
        raise UserError(f"no decodable images under {source}: all {len(candidates)} image files failed, e.g. "
                        + "; ".join(f"{entry['path']}: {entry['reason']}" for entry in skipped[:5]))
    if strict and skipped:
        raise UserError(f"--strict: {len(skipped)} file(s) under {source} could not be used; nothing was written. "
                        "Fix or remove them, or rerun without --strict to skip them:\n"
                        + "\n".join(f"  {entry['path']}: {entry['reason']}" for entry in skipped))
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
    kept: list[tuple[_Candidate, _Decoded]], class_names: list[str], *, grayscale: bool, test_fraction: float,
    seed: int, unlabeled: bool,
) -> dict[str, SplitData]:
    """Stack decoded images into splits: given splits as they are, the others split per class with `seed`
    (test_fraction of each class, at least one image left in train); rows shuffled with `seed`."""
    label_of = {name: index for index, name in enumerate(class_names)}
    rows: dict[str, list[tuple[np.ndarray, int]]] = {"train": [], "test": []}
    by_class: dict[int, list[np.ndarray]] = {}
    for candidate, result in kept:
        pixels = result.pixels[..., np.newaxis] if grayscale else _as_rgb(result.pixels)
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


SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
HELD_OUT_ORDER = ("val", "validation", "test")  # the first usable one is raysl's labelled `test` split
LISTING_THREADS = 16  # listing is I/O-bound (object stores: one request per folder)


@dataclass
class FolderPlan:
    """What an image folder holds, from listing only (no image is opened): the candidates (split None: the
    seeded split decides), files already skipped, whether it is unlabeled, the class names (index = label id),
    which source folders became raysl's splits ({"train": name|None, "test": name|None, "ignored": [...]}),
    and notes for the summary line."""

    candidates: list[_Candidate]
    skipped: list[dict[str, str]]
    unlabeled: bool
    class_names: list[str]
    split_folders: dict
    notes: list[str] = field(default_factory=list)


def _is_local(filesystem: pafs.FileSystem) -> bool:
    return isinstance(filesystem, pafs.LocalFileSystem)


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _scan(filesystem: pafs.FileSystem, path: str) -> tuple[list[str], list[str]]:
    """(subfolder names, file names) directly in `path`, sorted; hidden entries (".name") left out."""
    folders, files = [], []
    if _is_local(filesystem):
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    folders.append(entry.name)
                elif entry.is_file():
                    files.append(entry.name)
    else:
        for info in filesystem.get_file_info(pafs.FileSelector(path)):
            if info.base_name.startswith("."):
                continue
            if info.type == pafs.FileType.Directory:
                folders.append(info.base_name)
            elif info.type == pafs.FileType.File:
                files.append(info.base_name)
    return sorted(folders), sorted(files)


def _walk_images(filesystem: pafs.FileSystem, path: str) -> list[str]:
    """Paths (relative to `path`, sorted) of the image files below `path`, recursively; hidden entries left out.
    Local folders use os.scandir (fast for millions of files); URIs one recursive pyarrow FileSelector."""
    found = []
    if _is_local(filesystem):
        stack = [""]
        while stack:
            relative = stack.pop()
            with os.scandir(f"{path}/{relative}" if relative else path) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    name = f"{relative}/{entry.name}" if relative else entry.name
                    if entry.is_dir():
                        stack.append(name)
                    elif entry.is_file() and _is_image_name(entry.name):
                        found.append(name)
    else:
        selector = pafs.FileSelector(path, recursive=True)
        for info in filesystem.get_file_info(selector):
            relative = info.path[len(path):].lstrip("/")
            if info.type == pafs.FileType.File and _is_image_name(info.base_name) and not any(
                part.startswith(".") for part in relative.split("/")
            ):
                found.append(relative)
    return sorted(found)


def _map_listing(function: Callable, items: list, workers: int | None) -> list:
    if len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(len(items), max(workers or 0, LISTING_THREADS))) as executor:
        return list(executor.map(function, items))


def _list_classes(
    filesystem: pafs.FileSystem, source: str, base: str, shown: str, workers: int | None,
) -> tuple[dict[str, list[str]], list[str]]:
    """({class folder: image paths relative to it}, loose image file names directly in `base`), listing the
    class folders in parallel. Class folders without images are left out; one holding further folders with
    images is an error (never flattened). `shown` is `base` as the user wrote it."""
    folders, files = _scan(filesystem, base)
    listings = _map_listing(lambda folder: _walk_images(filesystem, f"{base}/{folder}"), folders, workers)
    classes = {}
    for folder, paths in zip(folders, listings):
        if not paths:
            continue
        nested = next((path for path in paths if "/" in path), None)
        if nested is not None:
            raise UserError(
                f"class folder {join_uri(shown, folder)} holds further folders with images (e.g. "
                f"{join_uri(shown, folder, nested)}); raysl does not flatten nested class folders. Move the "
                f"images directly into {join_uri(shown, folder)}, or make each subfolder a class folder of its own"
            )
        classes[folder] = paths
    return classes, [name for name in files if _is_image_name(name)]


SHIPPED_CLASS_LISTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "classlists")


def shipped_class_lists() -> list[str]:
    """The names of the class lists shipped in raysl/classlists/ (a file's stem, e.g. imagenet100)."""
    if not os.path.isdir(SHIPPED_CLASS_LISTS):
        return []
    return sorted(name[:-4] for name in os.listdir(SHIPPED_CLASS_LISTS) if name.endswith(".txt"))


def read_class_list(classes_file: str) -> list[str]:
    """The class folder names listed in a text file (one a line; blank lines and `#` comment lines ignored),
    sorted and without repeats. `classes_file` may also name a shipped list (`imagenet100`: raysl/classlists/)
    when no file of that name exists; an existing file takes precedence."""
    filesystem, path = open_filesystem(classes_file)
    if not is_file(filesystem, path):
        if classes_file in shipped_class_lists():
            filesystem, path = pafs.LocalFileSystem(), os.path.join(SHIPPED_CLASS_LISTS, f"{classes_file}.txt")
        else:
            raise UserError(f"--classes {classes_file}: no such file; pass a text file with one class folder name a "
                            f"line, or a shipped list name ({', '.join(shipped_class_lists())})")
    try:
        text = read_path(filesystem, path).decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(f"--classes {classes_file} is not UTF-8 text ({error}); "
                        "pass a text file with one class folder name a line") from error
    names = [line.strip() for line in text.splitlines()]
    names = sorted({name for name in names if name and not name.startswith("#")})
    if not names:
        raise UserError(f"--classes {classes_file} lists no class names; put one class folder name on each line")
    return names


def plan_image_folder(
    source: str, *, unlabeled: bool = False, classes_file: str | None = None, workers: int | None = None,
) -> FolderPlan:
    """List an image folder (paths only; shared by the fixed-shape and the encoded paths).

    Layouts. Folders named train, val, validation or test (any case) directly under SRC are splits, never
    classes: the source's train folder becomes raysl's `train` split, the first usable of val, validation,
    test becomes `test` (ImageNet: val); a further one is ignored (named in the notes and `split_folders`).
    A held-out folder without class subfolders (ImageNet's unlabeled test/) is not usable as the labelled
    test split and is skipped. With only a train folder, `train` is split per class with the test fraction
    (candidates with split None). Without split folders: SRC/<class>/<image> (split per class), or, when no
    subfolder holds images, SRC/<image> unlabeled. With `unlabeled`, every image (under the train folder if
    there is one) is an unlabeled train image. A class folder holding folders with images is an error.
    Loose images next to class folders are skipped. `classes_file` keeps only the classes it lists (label
    id = position in the sorted names, the same in every split); a listed class missing from the train
    classes is an error. Candidates are sorted by path within each split.
    """
    filesystem, root = open_filesystem(source)
    if not is_dir(filesystem, root):
        raise UserError(f"image folder {source} does not exist or is not a directory; "
                        "pass the folder holding the images")
    folders, _ = _scan(filesystem, root)
    split_dirs: dict[str, str] = {}
    for folder in folders:  # sorted, so of "Val" and "val" the first wins (and the other is ignored)
        if folder.lower() in SPLIT_FOLDER_NAMES:
            split_dirs.setdefault(folder.lower(), folder)
    notes: list[str] = []
    split_folders: dict = {"train": None, "test": None, "ignored": []}
    other_splits = sorted(set(name for name in folders if name.lower() in SPLIT_FOLDER_NAMES) - set(split_dirs.values()))
    split_folders["ignored"].extend(other_splits)
    if split_dirs and "train" not in split_dirs:
        raise UserError(
            f"image folder {source} has split folder(s) {', '.join(sorted(split_dirs.values()))} but no train "
            "folder; add SRC/train/<class>/..., or point SRC at a folder of class folders"
        )
    if split_dirs:
        ignored = [name for name in folders if name.lower() not in SPLIT_FOLDER_NAMES]
        if ignored:
            notes.append(f"ignored folder(s) next to the split folders: {', '.join(ignored)}")
    if unlabeled:
        base = f"{root}/{split_dirs['train']}" if split_dirs else root
        if split_dirs:
            split_folders["train"] = split_dirs["train"]
            split_folders["ignored"].extend(split_dirs[name] for name in HELD_OUT_ORDER if name in split_dirs)
        top_folders, top_files = _scan(filesystem, base)
        listings = _map_listing(lambda folder: _walk_images(filesystem, f"{base}/{folder}"), top_folders, workers)
        paths = [name for name in top_files if _is_image_name(name)]
        for folder, listed in zip(top_folders, listings):
            paths.extend(f"{folder}/{path}" for path in listed)
        candidates = [_Candidate(f"{base}/{path}", "train", None) for path in sorted(paths)]
        return FolderPlan(candidates, [], True, [], split_folders, notes)

    skipped: list[dict[str, str]] = []
    if split_dirs:
        train_name = split_dirs["train"]
        split_folders["train"] = train_name
        train_classes, loose = _list_classes(filesystem, source, f"{root}/{train_name}", join_uri(source, train_name), workers)
        if not train_classes:  # a flat train folder: unlabeled images
            held_out = [split_dirs[name] for name in HELD_OUT_ORDER if name in split_dirs]
            split_folders["ignored"].extend(held_out)
            notes.append(f"{train_name}/ has no class folders: unlabeled" + (
                f"; held-out folder(s) {', '.join(held_out)} ignored" if held_out else ""))
            candidates = [_Candidate(f"{root}/{train_name}/{name}", "train", None) for name in loose]
            return FolderPlan(candidates, [], True, [], split_folders, notes)
        per_split = {"train": (train_name, train_classes, loose)}
        for name in HELD_OUT_ORDER:
            if name not in split_dirs:
                continue
            folder = split_dirs[name]
            if "test" in per_split:
                split_folders["ignored"].append(folder)
                if _scan(filesystem, f"{root}/{folder}")[0]:
                    notes.append(f"held-out folder {folder}/ ignored (the test split is {per_split['test'][0]}/)")
                else:
                    notes.append(f"held-out folder {folder}/ has no class folders (unlabeled images): not usable "
                                 f"as the labelled test split, ignored (the test split is {per_split['test'][0]}/)")
                continue
            classes, loose_held = _list_classes(filesystem, source, f"{root}/{folder}", join_uri(source, folder), workers)
            if not classes:
                split_folders["ignored"].append(folder)
                notes.append(f"held-out folder {folder}/ has no class folders (unlabeled images): "
                             "not usable as the labelled test split, skipped")
                continue
            per_split["test"] = (folder, classes, loose_held)
            split_folders["test"] = folder
    else:
        classes, loose = _list_classes(filesystem, source, root, source, workers)
        if not classes:  # no subfolder holds images: an unlabeled flat folder
            candidates = [_Candidate(f"{root}/{name}", "train", None) for name in loose]
            return FolderPlan(candidates, [], True, [], split_folders, notes)
        per_split = {None: (None, classes, loose)}

    train_classes = per_split.get("train", per_split.get(None))[1]
    if classes_file is not None:
        wanted = read_class_list(classes_file)
        missing = [name for name in wanted if name not in train_classes]
        if missing:
            where = join_uri(source, split_folders["train"]) if split_folders["train"] else source
            raise UserError(
                f"--classes {classes_file} lists {len(missing)} class(es) with no images in {where}: "
                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; fix the list or the folder names"
            )
        class_names = wanted
    else:
        class_names = sorted({name for _, classes, _ in per_split.values() for name in classes})
    keep = set(class_names)
    if "train" in per_split and "test" not in per_split:  # only a train folder: split it with the test fraction
        per_split = {None: per_split["train"]}
    candidates = []
    for split, (folder, classes, loose_files) in per_split.items():
        base = f"{root}/{folder}" if folder else root
        shown = join_uri(source, folder) if folder else source
        for name in loose_files:
            reason = f"directly in {shown}, not in a class folder (move it into one, or use --unlabeled)"
            skipped.append({"path": join_uri(shown, name), "reason": reason})
        for class_name in sorted(classes):
            if class_name not in keep:
                continue
            candidates.extend(_Candidate(f"{base}/{class_name}/{path}", split, class_name) for path in classes[class_name])
    if classes_file is not None:
        dropped = sorted(set().union(*(classes for _, classes, _ in per_split.values())) - keep)
        if dropped:
            notes.append(f"--classes keeps {len(class_names)} class(es), leaves out {len(dropped)}")
    return FolderPlan(candidates, skipped, False, class_names, split_folders, notes)


def _decode_image(filesystem: pafs.FileSystem, path: str, image_size: int | None) -> _Decoded | str:
    """Decode one file into 8-bit pixels, or return why it cannot be used."""
    try:
        data = read_path(filesystem, path)
        if not data:
            return "empty file"
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            pixels = _to_uint8(image)
    except UnidentifiedImageError:
        return "UnidentifiedImageError: not a recognised image format"
    except Exception as error:  # PIL reports bad data as OSError, SyntaxError, ValueError, struct.error, ...
        return f"{type(error).__name__}: {error}"
    resized = image_size is not None and pixels.shape[:2] != (image_size, image_size)
    if resized:
        pixels = np.asarray(Image.fromarray(pixels).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return _Decoded(pixels, mode, resized)


def _to_uint8(image: Image.Image) -> np.ndarray:
    """Pixels as uint8 (H, W) for grayscale modes and grey palettes, else (H, W, 3); alpha is dropped."""
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        return _scale_to_uint8(np.asarray(image), maximum=65535)
    if mode == "I":
        values = np.asarray(image)  # 16-bit PNG/TIFF data when within 0..65535
        if values.min() >= 0 and values.max() <= 65535:
            return _scale_to_uint8(values, maximum=65535)
        return _normalise(values)
    if mode == "F":
        values = np.asarray(image)
        return _scale_to_uint8(values, maximum=1.0) if values.min() >= 0 and values.max() <= 1 else _normalise(values)
    if mode in GRAYSCALE_MODES:
        return np.asarray(image.convert("L"))
    if mode in ("P", "PA"):
        rgb = np.asarray(image.convert("RGBA"))[..., :3]
        grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return np.ascontiguousarray(rgb[..., 0]) if grey else np.ascontiguousarray(rgb)
    return np.asarray(image.convert("RGB"))


def _scale_to_uint8(values: np.ndarray, maximum: float) -> np.ndarray:
    return np.rint(values.astype(np.float64) * (255.0 / maximum)).clip(0, 255).astype(np.uint8)


def _normalise(values: np.ndarray) -> np.ndarray:
    """Min-max normalise to 0..255 (for int/float images whose range is not a known bit depth)."""
    values = np.nan_to_num(values.astype(np.float64))
    low, high = values.min(), values.max()
    return np.zeros(values.shape, np.uint8) if high == low else _scale_to_uint8(values - low, maximum=high - low)


def _as_rgb(pixels: np.ndarray) -> np.ndarray:
    return np.repeat(pixels[..., np.newaxis], 3, axis=2) if pixels.ndim == 2 else pixels


def _check_one_size(source: str, root: str, kept: list[tuple[_Candidate, _Decoded]]) -> None:
    examples: dict[tuple[int, int], str] = {}
    for candidate, result in kept:
        examples.setdefault(result.pixels.shape[:2], candidate.path)
    if len(examples) > 1:
        listed = "; ".join(f"{width}x{height} e.g. {_user_path(source, root, path)}"
                           for (height, width), path in list(examples.items())[:5])
        raise UserError(f"images under {source} have {len(examples)} different sizes ({listed}); "
                        "rerun with --image-size N to resize them all to N x N, or with --mode encoded to keep each "
                        "image at its own size")


def _user_path(source: str, root: str, path: str) -> str:
    """A file path as the user wrote the root (keeps the URI scheme)."""
    return join_uri(source, path[len(root):].lstrip("/"))


# ---------------------------------------------------------------------------------------------- shared


def resize_all(images: np.ndarray, image_size: int, *, workers: int | None, progress: bool) -> np.ndarray:
    """Resize (N, H, W, C) uint8 images to (N, image_size, image_size, C), antialiased bilinear."""
    channels = images.shape[3]

    def resize_one(image: np.ndarray) -> np.ndarray:
        pil_image = Image.fromarray(image[..., 0] if channels == 1 else image)
        return np.asarray(pil_image.resize((image_size, image_size), Image.Resampling.BILINEAR)).reshape(
            image_size, image_size, channels)

    resized = _map_in_threads(resize_one, images, workers=workers, progress=progress, description="resizing")
    return np.stack(resized) if resized else np.empty((0, image_size, image_size, channels), np.uint8)


def _map_in_threads(
    function: Callable, items: Iterable, *, workers: int | None, progress: bool, description: str,
) -> list:
    """`[function(item) for item in items]` on a thread pool (PIL releases the GIL while decoding and resizing)."""
    items = list(items) if not isinstance(items, np.ndarray) else items
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as executor:
        return list(tqdm(executor.map(function, items), total=len(items), desc=description, unit="img",
                         disable=not progress))
