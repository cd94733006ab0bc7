"""Tests for the shipped class lists (raysl/classlists/) and `--classes` reading them by name."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl.cli import main
from raysl.ingest.dataset import read_manifest
from raysl.ingest.prepare import prepare
from raysl.ingest.folder import SHIPPED_CLASS_LISTS, plan_image_folder, read_class_list, shipped_class_lists
from raysl.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
IMAGENET100 = Path(SHIPPED_CLASS_LISTS) / "imagenet100.txt"
QUIET = {"progress": False, "workers": 2}
# Not among the 100 (n01440764 tench and n01443537 goldfish are ImageNet classes outside the subset).
OUTSIDE = ["n01440764", "n01443537", "not_a_wnid"]


def shipped_ids() -> list[str]:
    """The ids of the shipped file, in the file's order."""
    lines = [line.strip() for line in IMAGENET100.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    if seed % 2:
        Image.fromarray(pixels).save(path.with_suffix(".png"))
    else:
        Image.fromarray(pixels).save(path.with_suffix(".JPEG"), quality=90)


def imagenet_style(root: Path, classes: list[str], train: int = 2, val: int = 1, val_classes: list[str] | None = None) -> Path:
    """root/train/<class>/<images> and root/val/<class>/<images>, small PNG and JPEG images."""
    seed = 0
    for name in classes:
        for index in range(train):
            image(root / "train" / name / f"{name}_{index}", seed := seed + 1)
    for name in classes if val_classes is None else val_classes:
        for index in range(val):
            image(root / "val" / name / f"ILSVRC2012_val_{name}_{index}", seed := seed + 1)
    return root


def labels(out: Path, split: str) -> list[int]:
    manifest = read_manifest(str(out))
    shards = manifest["splits"][split]["shards"]
    return pa.concat_tables([pq.read_table(out / shard) for shard in shards]).column("label").to_pylist()


# ---------------------------------------------------------------------------------------------- the shipped list


def test_shipped_imagenet100_has_100_unique_wnids():
    ids = shipped_ids()
    assert len(ids) == 100 and len(set(ids)) == 100
    assert all(re.fullmatch(r"n\d{8}", name) for name in ids)
    assert ids[:3] == ["n02869837", "n01749939", "n02488291"] and ids[-1] == "n02090622"  # CMC's order
    header = " ".join(line.lstrip("# ") for line in IMAGENET100.read_text().splitlines() if line.startswith("#"))
    assert "HobbitLong/CMC" in header and "vturrisi/solo-learn" in header and "Contrastive Multiview Coding" in header
    assert not set(OUTSIDE) & set(ids)


def test_read_class_list_by_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file named imagenet100 here
    assert "imagenet100" in shipped_class_lists()
    assert read_class_list("imagenet100") == sorted(shipped_ids())


def test_shipped_lists_are_package_data():
    with open(ROOT / "pyproject.toml", "rb") as handle:
        package_data = tomllib.load(handle)["tool"]["setuptools"]["package-data"]["raysl"]
    assert "classlists/*.txt" in package_data
    assert Path(SHIPPED_CLASS_LISTS) == ROOT / "raysl" / "classlists"


def test_an_existing_file_wins_over_the_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "imagenet100").write_text("b\na\n")
    assert read_class_list("imagenet100") == ["a", "b"]


def test_user_file_skips_comments_and_blank_lines(tmp_path):
    listing = tmp_path / "mine.txt"
    listing.write_text("# my subset\n\nn02869837\n   \n  # indented comment\n  n01749939  \nn02869837\n\n")
    assert read_class_list(str(listing)) == ["n01749939", "n02869837"]
    listing.write_text("# only comments\n\n")
    with pytest.raises(UserError, match="lists no class names"):
        read_class_list(str(listing))


def test_missing_file_names_the_shipped_lists(tmp_path):
    with pytest.raises(UserError, match=r"no_such\.txt: no such file.*shipped list name.*imagenet100"):
        read_class_list(str(tmp_path / "no_such.txt"))
    with pytest.raises(UserError, match=r"imagenet1000: no such file.*imagenet100"):
        read_class_list("imagenet1000")


# ---------------------------------------------------------------------------------------------- preparing folders


def test_classes_file_keeps_only_listed_wnids(tmp_path):
    ids = shipped_ids()
    few = ids[:4]
    source = imagenet_style(tmp_path / "in", few + OUTSIDE, train=3, val=2)
    listing = tmp_path / "few.txt"
    listing.write_text("# four of the ImageNet-100 classes\n" + "\n".join(few) + "\n")
    plan = plan_image_folder(str(source), classes_file=str(listing))
    assert plan.class_names == sorted(few)
    manifest = prepare("image-folder", str(source), str(tmp_path / "out"), classes=str(listing), **QUIET)
    assert manifest["class_names"] == sorted(few)
    assert manifest["splits"]["train"]["count"] == 4 * 3 and manifest["splits"]["test"]["count"] == 4 * 2
    assert sorted(set(labels(tmp_path / "out", "train"))) == [0, 1, 2, 3]


def test_cli_classes_imagenet100_on_a_full_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ids = shipped_ids()
    source = imagenet_style(tmp_path / "in", ids + OUTSIDE, train=2, val=1)
    code = main(["prepare", "image-folder", str(source), "--out", str(tmp_path / "out"), "--classes", "imagenet100",
                 "--no-progress", "--workers", "2"])
    assert code == 0, capsys.readouterr().err
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["class_names"] == sorted(ids)
    assert manifest["class_ids"] == {name: index for index, name in enumerate(sorted(ids))}
    assert manifest["splits"]["train"]["count"] == 200 and manifest["splits"]["test"]["count"] == 100
    assert sorted(set(labels(tmp_path / "out", "test"))) == list(range(100))


def test_imagenet100_on_a_partial_folder_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """A listed class without train images is an error naming the list, the folder and the missing ids."""
    monkeypatch.chdir(tmp_path)
    ids = shipped_ids()
    source = imagenet_style(tmp_path / "in", ids[:3] + OUTSIDE)
    with pytest.raises(UserError, match=r"--classes imagenet100 lists 97 class\(es\) with no images in .*in/train: "
                                        r"n\d{8}(, n\d{8}){9} \.\.\.; fix the list or the folder names"):
        plan_image_folder(str(source), classes_file="imagenet100")
    code = main(["prepare", "image-folder", str(source), "--out", str(tmp_path / "out"), "--classes", "imagenet100",
                 "--no-progress", "--workers", "2"])
    assert code == 2
    assert "lists 97 class(es) with no images" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_listed_class_missing_only_from_val_is_kept(tmp_path):
    """Only the train folder is checked: a listed class absent from val/ keeps its id, with no test images."""
    ids = shipped_ids()
    source = imagenet_style(tmp_path / "in", ids + OUTSIDE, train=2, val=1, val_classes=ids[1:])
    plan = plan_image_folder(str(source), classes_file="imagenet100")
    assert plan.class_names == sorted(ids)
    absent = sorted(ids).index(ids[0])
    test_labels = [plan.class_names.index(c.class_name) for c in plan.candidates if c.split == "test"]
    assert len(test_labels) == 99 and absent not in test_labels
