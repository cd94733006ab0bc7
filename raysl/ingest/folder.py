"""An image folder (class folders, optional split folders) listed and planned: which files, which class,
which split, in threads on local disks and object storage; shipped class lists (imagenet100).

Imports raysl.ingest.source, raysl.io and raysl.errors.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from raysl.errors import UserError
from raysl.ingest.source import IMAGE_EXTENSIONS
from raysl.io.storage import is_dir, is_file, join_uri, open_filesystem, read_path


@dataclass
class Candidate:
    """One image file to decode: where it is, which split it goes to (None: seeded split) and its class."""

    path: str
    split: str | None
    class_name: str | None


SPLIT_FOLDER_NAMES = ("train", "val", "validation", "test")
HELD_OUT_ORDER = ("val", "validation", "test")  # the first usable one is raysl's labelled `test` split
LISTING_THREADS = 16  # listing is I/O-bound (object stores: one request per folder)


@dataclass
class FolderPlan:
    """What an image folder holds, from listing only (no image is opened): the candidates (split None: the
    seeded split decides), files already skipped, whether it is unlabeled, the class names (index = label id),
    which source folders became raysl's splits ({"train": name|None, "test": name|None, "ignored": [...]}),
    and notes for the summary line."""

    candidates: list[Candidate]
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
        candidates = [Candidate(f"{base}/{path}", "train", None) for path in sorted(paths)]
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
            candidates = [Candidate(f"{root}/{train_name}/{name}", "train", None) for name in loose]
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
            candidates = [Candidate(f"{root}/{name}", "train", None) for name in loose]
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
            candidates.extend(Candidate(f"{base}/{class_name}/{path}", split, class_name) for path in classes[class_name])
    if classes_file is not None:
        dropped = sorted(set().union(*(classes for _, classes, _ in per_split.values())) - keep)
        if dropped:
            notes.append(f"--classes keeps {len(class_names)} class(es), leaves out {len(dropped)}")
    return FolderPlan(candidates, skipped, False, class_names, split_folders, notes)
