"""The generated ImageNet-shaped tree (raysl.ingest.synthetic --imagenet, benchmarks/imagenet_scale.py's data): its
layout at ImageNet's size (counted, not written), the files of small trees, and `--classes imagenet100` on one."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raysl.ingest.folder import plan_image_folder
from raysl.ingest.prepare import prepare
from raysl.ingest.synthetic import (
    IMAGENET_TRAIN,
    MARKER,
    imagenet100_wnids,
    imagenet_layout,
    main,
    make_imagenet,
    scaled,
)

WNID = re.compile(r"n\d{8}")


def test_full_layout_is_imagenet_1k_shaped():
    counts, val = imagenet_layout()
    subset = imagenet100_wnids()
    assert len(counts) == len(set(counts)) == 1000 and all(WNID.fullmatch(name) for name in counts)
    assert list(counts) == sorted(counts) and set(subset) <= set(counts) and len(subset) == 100
    values = np.array(list(counts.values()))
    assert values.sum() == IMAGENET_TRAIN == 1_281_167 and values.min() >= 732 and values.max() == 1300
    assert 50 <= (values < 1300).sum() <= 200  # most classes 1,300, some fewer (ImageNet's spread)
    assert sum(counts[name] for name in subset) == 126_689  # ImageNet-100's train images
    assert val == 50 and val * len(counts) == 50_000 and val * len(subset) == 5_000
    assert imagenet_layout() == (counts, val)  # deterministic


@pytest.mark.parametrize("train", [10_000, 100_000])
def test_scaled_layouts_keep_the_shape(train):
    counts, val = imagenet_layout(train)
    values = np.array(list(counts.values()))
    assert len(counts) == 1000 and values.sum() == train and values.min() >= 1
    assert val == max(1, round(50 * train / IMAGENET_TRAIN))
    assert values.max() - values.min() <= 0.45 * values.max() + 1  # per-class spread kept, scaled
    fewer, _ = imagenet_layout(600, classes=120)
    assert len(fewer) == 120 and set(imagenet100_wnids()) <= set(fewer) and sum(fewer.values()) == 600


def test_scaled_sums_exactly():
    counts = np.array([1300, 1300, 732, 1000])
    for total in (4, 5, 17, 1000, 4331):
        out = scaled(counts, total)
        assert out.sum() == total and out.min() >= 1


def test_small_tree_files(tmp_path, capsys):
    """The files: ImageNet's names and layout, the per-class counts of the layout, varied JPEGs that decode."""
    out = tmp_path / "tree"
    main([str(out), "--imagenet", "--train-images", "360", "--classes", "120", "--val-per-class", "2",
          "--pool-per-class", "3", "--workers", "2"])
    assert "120 classes, 360 train + 240 val images" in capsys.readouterr().out
    counts, _ = imagenet_layout(360, classes=120)
    assert sorted(path.name for path in (out / "train").iterdir()) == list(counts)
    assert sorted(path.name for path in (out / "val").iterdir()) == list(counts)
    sizes, files = set(), 0
    for name, count in counts.items():
        train = sorted((out / "train" / name).iterdir())
        val = sorted((out / "val" / name).iterdir())
        assert len(train) == count and len(val) == 2
        assert all(re.fullmatch(rf"{name}_\d+\.JPEG", path.name) for path in train)
        assert all(re.fullmatch(r"ILSVRC2012_val_\d{8}\.JPEG", path.name) for path in val)
        assert val[0].read_bytes() not in {path.read_bytes() for path in train}  # val is not a copy of train
        for path in train + val:
            with Image.open(io.BytesIO(path.read_bytes())) as image:
                assert image.format == "JPEG" and image.mode in ("RGB", "L")
                image.load()
                sizes.add(image.size)
                assert 64 <= max(image.size) <= 160
            files += 1
    assert files == 600 and len(sizes) > 50  # sizes varied
    marker = json.loads((out / MARKER).read_text())
    assert marker["train"] == 360 and marker["val"] == 240 and marker["pool"] == 360
    assert make_imagenet(out, train_images=360, classes=120, val_per_class=2, pool_per_class=3) == marker  # kept
    with pytest.raises(SystemExit, match="not empty"):
        make_imagenet(out, train_images=361, classes=120, val_per_class=2, pool_per_class=3)


def test_thousand_wnid_folders(tmp_path):
    out = tmp_path / "tree"
    made = make_imagenet(out, train_images=1000, val_per_class=1, pool_per_class=2, min_side=32, max_side=48, workers=2)
    assert made["classes"] == 1000 and made["train"] == 1000 and made["val"] == 1000
    names = sorted(path.name for path in (out / "train").iterdir())
    assert len(names) == 1000 and all(WNID.fullmatch(name) for name in names)
    assert set(imagenet100_wnids()) <= set(names)
    assert sum(1 for _ in (out / "train").glob("*/*.JPEG")) == 1000
    plan = plan_image_folder(str(out))
    assert len(plan.class_names) == 1000 and len(plan.candidates) == 2000


def test_prepare_classes_imagenet100_on_a_generated_tree(tmp_path):
    out = tmp_path / "tree"
    make_imagenet(out, train_images=480, classes=140, val_per_class=2, pool_per_class=2, min_side=32, max_side=64,
                  workers=2)
    counts, _ = imagenet_layout(480, classes=140)
    subset = sorted(imagenet100_wnids())
    manifest = prepare("image-folder", str(out), str(tmp_path / "in100"), classes="imagenet100", progress=False,
                       workers=2)
    assert manifest["storage"] == "encoded" and manifest["class_names"] == subset
    assert manifest["splits"]["train"]["count"] == sum(counts[name] for name in subset)
    assert manifest["splits"]["test"]["count"] == 2 * 100
    assert manifest["splits"]["train"]["class_counts"] == {name: counts[name] for name in subset}
    assert manifest["converted"] == 0 and manifest["skipped"] == []  # kept byte for byte
