"""Tests for `raysl prepare`: idx, CIFAR and image-folder sources, the on-disk format, ensure_prepared."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl.ingest import cache as cache_module
from raysl.ingest.cache import ensure_prepared
from raysl.ingest.dataset import load_split, read_manifest, split_files
from raysl.ingest.prepare import prepare
from raysl.ingest.write import DEFAULT_SOURCES
from raysl.errors import UserError

QUIET = {"progress": False, "workers": 2}


# ---------------------------------------------------------------------------------------------- idx


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    content = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(content) if compress else content)


@pytest.fixture
def idx_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Train files gzipped, test files plain: 20 / 10 random 28x28 images."""
    rng = np.random.default_rng(0)
    directory = tmp_path / "idx"
    directory.mkdir()
    arrays = {}
    for split, prefix, count, compress in (("train", "train", 20, True), ("test", "t10k", 10, False)):
        images = rng.integers(0, 256, (count, 28, 28), dtype=np.uint8)
        labels = np.arange(count, dtype=np.uint8) % 10
        suffix = ".gz" if compress else ""
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        arrays[split] = (images, labels)
    return directory, arrays


def test_idx_round_trip(idx_dir, tmp_path):
    directory, arrays = idx_dir
    out = tmp_path / "out"
    manifest = prepare("fashion-mnist", str(directory), str(out), **QUIET)
    assert manifest == read_manifest(str(out))
    assert manifest["image_shape"] == [28, 28, 1]
    assert manifest["class_names"][0] == "T-shirt/top" and manifest["class_names"][9] == "Ankle boot"
    assert manifest["label_sets"] == {"label": manifest["class_names"]}
    assert manifest["splits"]["train"]["count"] == 20 and manifest["splits"]["test"]["count"] == 10
    assert manifest["splits"]["train"]["class_counts"]["Trouser"] == 2
    assert manifest["splits"]["train"]["shards"] == ["train/part-00000.parquet"]
    assert (manifest["kept"], manifest["converted"], manifest["skipped"]) == (30, 0, [])
    train_images = arrays["train"][0]
    assert manifest["mean"][0] == pytest.approx(train_images.mean() / 255)
    assert manifest["std"][0] == pytest.approx(train_images.std() / 255)
    for split, (images, labels) in arrays.items():
        loaded_images, loaded_labels = load_split(str(out), split)
        assert loaded_images.dtype == np.uint8 and loaded_labels.dtype == np.int64
        np.testing.assert_array_equal(loaded_images, images[..., None])
        np.testing.assert_array_equal(loaded_labels, labels)
    table = pq.read_table(out / "test" / "part-00000.parquet")
    assert table.column("index").to_pylist() == list(range(10))
    assert load_split(str(out), "train", limit=5)[0].shape == (5, 28, 28, 1)


def test_mnist_class_names_and_resize(idx_dir, tmp_path):
    directory, _ = idx_dir
    manifest = prepare("mnist", str(directory), str(tmp_path / "out"), image_size=16, **QUIET)
    assert manifest["class_names"] == [str(digit) for digit in range(10)]
    assert manifest["image_shape"] == [16, 16, 1] and manifest["converted"] == 30
    assert load_split(str(tmp_path / "out"), "test")[0].shape == (10, 16, 16, 1)


def test_idx_missing_files_says_how_to_get_them(tmp_path):
    empty = tmp_path / "nowhere"
    empty.mkdir()
    with pytest.raises(UserError) as caught:
        prepare("fashion-mnist", str(empty), str(tmp_path / "out"), **QUIET)
    message = str(caught.value)
    assert str(empty) in message and "train-images-idx3-ubyte" in message
    assert "apt-get install dataset-fashion-mnist" in message and "--download" in message
    assert not (tmp_path / "out").exists()


def test_idx_corrupt_file_is_named(idx_dir, tmp_path):
    directory, _ = idx_dir
    (directory / "t10k-labels-idx1-ubyte").write_bytes(b"garbage!")
    with pytest.raises(UserError, match="t10k-labels-idx1-ubyte.*magic"):
        prepare("mnist", str(directory), str(tmp_path / "out"), **QUIET)


@pytest.mark.slow
def test_real_fashion_mnist(fashion_mnist, tmp_path):  # skipped without Debian's package, an error under CI
    assert DEFAULT_SOURCES["fashion-mnist"] == str(fashion_mnist)
    manifest = prepare("fashion-mnist", None, str(tmp_path / "fm"), **QUIET)
    assert manifest["splits"]["train"]["count"] == 60000 and manifest["splits"]["test"]["count"] == 10000
    assert set(manifest["splits"]["train"]["class_counts"].values()) == {6000}
    assert len(manifest["splits"]["train"]["shards"]) == 6


def test_download_fetches_missing_files_without_network(idx_dir, tmp_path, monkeypatch):
    """--download wiring, with torchvision's download_url replaced by a local copy (no network in tests)."""
    import torchvision.datasets.utils

    directory, arrays = idx_dir
    fetched = []

    def fake_download_url(url: str, root: str, filename: str, md5: str) -> None:
        fetched.append(url)
        original = directory / filename  # the fixture's test files are not gzipped
        content = original.read_bytes() if original.exists() else gzip.compress(original.with_suffix("").read_bytes())
        (Path(root) / filename).write_bytes(content)

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", fake_download_url)
    source = tmp_path / "fresh"
    manifest = prepare("mnist", str(source), str(tmp_path / "out"), download=True, **QUIET)
    assert len(fetched) == 4 and fetched[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")
    assert manifest["source"] == str(source) and manifest["splits"]["test"]["count"] == 10

    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", offline)
    with pytest.raises(UserError, match="could not download mnist file.*by hand"):
        prepare("mnist", str(tmp_path / "other"), str(tmp_path / "out2"), download=True, **QUIET)


# ---------------------------------------------------------------------------------------------- CIFAR


def write_pickle(path: Path, content: dict) -> None:
    path.write_bytes(pickle.dumps(content, protocol=2))  # the originals are Python 2 pickles with bytes keys


def test_cifar10(tmp_path):
    rng = np.random.default_rng(1)
    directory = tmp_path / "cifar-10-batches-py"
    directory.mkdir()
    write_pickle(directory / "batches.meta", {b"label_names": [f"class{i}".encode() for i in range(10)]})
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (2, 3072), dtype=np.uint8)
        batches[name] = data
        write_pickle(directory / name, {b"data": data, b"labels": [1, 7], b"batch_label": name.encode()})
    manifest = prepare("cifar10", str(directory), str(tmp_path / "out"), **QUIET)
    assert manifest["image_shape"] == [32, 32, 3] and manifest["class_names"][7] == "class7"
    assert manifest["splits"]["train"]["count"] == 10 and manifest["splits"]["test"]["count"] == 2
    images, labels = load_split(str(tmp_path / "out"), "test")
    np.testing.assert_array_equal(images, batches["test_batch"].reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert labels.tolist() == [1, 7]


def test_cifar100_keeps_fine_and_coarse_labels_from_parent_dir(tmp_path):
    directory = tmp_path / "cifar-100-python"
    directory.mkdir()
    write_pickle(directory / "meta", {b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                                      b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]})
    for name, count in (("train", 4), ("test", 2)):
        write_pickle(directory / name, {b"data": np.zeros((count, 3072), np.uint8),
                                        b"fine_labels": list(range(50, 50 + count)),
                                        b"coarse_labels": list(range(10, 10 + count))})
    out = tmp_path / "out"
    manifest = prepare("cifar100", str(tmp_path), str(out), **QUIET)  # the parent of cifar-100-python
    assert manifest["label_sets"]["label"][51] == "fine51" and manifest["label_sets"]["label_coarse"][19] == "coarse19"
    assert manifest["splits"]["train"]["class_counts"]["fine53"] == 1
    table = pq.read_table(out / "train" / "part-00000.parquet")
    assert table.column("label").to_pylist() == [50, 51, 52, 53]
    assert table.column("label_coarse").to_pylist() == [10, 11, 12, 13]


def test_cifar_missing_says_where_to_get_it(tmp_path):
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz.*--download"):
        prepare("cifar10", str(tmp_path), str(tmp_path / "out"), **QUIET)


# ---------------------------------------------------------------------------------------------- image folders


def save(path: Path, image: Image.Image, image_format: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format)


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def make_mixed_folder(root: Path) -> None:
    """Every awkward kind of image, three undecodable files and a text file, in three classes."""
    rgb = Image.new("RGB", (8, 8), (200, 30, 40))
    save(root / "cats" / "rgb.jpg", rgb)
    save(root / "cats" / "rgba.png", Image.new("RGBA", (8, 8), (10, 20, 30, 0)))
    save(root / "cats" / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 0, 0)))
    save(root / "cats" / "palette.png", rgb.convert("P", palette=Image.Palette.ADAPTIVE))
    transparent_palette = Image.new("P", (8, 8), 1)
    transparent_palette.putpalette([0, 0, 0, 255, 0, 0])
    transparent_palette.info["transparency"] = 0
    save(root / "cats" / "palette_transparent.png", transparent_palette)
    save(root / "cats" / "UPPER.JPG", rgb, "JPEG")
    save(root / "cats" / "png_named.jpg", rgb, "PNG")
    (root / "cats" / "empty.png").write_bytes(b"")
    (root / "cats" / "truncated.jpg").write_bytes(truncated_jpeg())
    (root / "cats" / "html.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
    (root / "cats" / "notes.txt").write_text("not an image")
    save(root / "dogs" / "sixteen.png", Image.fromarray(np.full((8, 8), 65535, np.uint16)))
    save(root / "dogs" / "bilevel.png", Image.new("1", (8, 8), 1))
    save(root / "dogs" / "image.tiff", rgb)
    save(root / "dogs" / "one.png", Image.new("RGB", (1, 1), (1, 2, 3)))
    save(root / "dogs" / "wide.png", Image.new("RGB", (2000, 3), (9, 9, 9)))
    save(root / "クラス" / "画像.png", rgb)
    save(root / "クラス" / "é.png", Image.new("L", (8, 8), 77))
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "README").write_text("readme")


def test_image_folder_mixed_modes(tmp_path):
    root, out = tmp_path / "images", tmp_path / "out"
    make_mixed_folder(root)
    manifest = prepare("image-folder", str(root), str(out), image_size=8, test_fraction=0.25, **QUIET)
    assert manifest["image_shape"] == [8, 8, 3]
    assert manifest["class_names"] == ["cats", "dogs", "クラス"]
    assert manifest["kept"] == 14 and manifest["converted"] == 9  # all but the 5 RGB 8x8 ones
    skipped = {Path(entry["path"]).name: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"empty.png", "truncated.jpg", "html.jpg"}
    assert skipped["empty.png"] == "empty file" and "truncated" in skipped["truncated.jpg"]
    assert all(entry["path"].startswith(str(root)) for entry in manifest["skipped"])
    totals = {name: manifest["splits"]["train"]["class_counts"][name] + manifest["splits"]["test"]["class_counts"][name]
              for name in manifest["class_names"]}
    assert totals == {"cats": 7, "dogs": 5, "クラス": 2}
    assert manifest["splits"]["test"]["class_counts"] == {"cats": 2, "dogs": 1, "クラス": 0}
    images, labels = load_split(str(out), "train")
    assert images.shape == (11, 8, 8, 3) and sorted(set(labels.tolist())) == [0, 1, 2]
    json.loads((out / "manifest.json").read_text(encoding="utf-8"))


def test_image_folder_pixels_need_one_size_or_image_size(tmp_path):
    """--mode pixels without --image-size needs one size; auto (the default) stores mixed sizes encoded."""
    make_mixed_folder(tmp_path / "images")
    with pytest.raises(UserError, match="--image-size.*--mode encoded"):
        prepare("image-folder", str(tmp_path / "images"), str(tmp_path / "out"), mode="pixels", **QUIET)
    assert not (tmp_path / "out").exists()
    manifest = prepare("image-folder", str(tmp_path / "images"), str(tmp_path / "auto"), **QUIET)
    assert manifest["storage"] == "encoded" and manifest["image_shape"] is None


def test_image_folder_all_grayscale_gives_one_channel_and_scales_16_bit(tmp_path):
    root = tmp_path / "gray"
    save(root / "a" / "sixteen_max.png", Image.fromarray(np.full((4, 4), 65535, np.uint16)))
    save(root / "a" / "sixteen_mid.png", Image.fromarray(np.full((4, 4), 257 * 100, np.uint16)))
    save(root / "a" / "plain.png", Image.new("L", (4, 4), 50))
    save(root / "b" / "bilevel.png", Image.fromarray(np.eye(4, dtype=bool)))
    grey_palette = Image.new("P", (4, 4), 3)
    grey_palette.putpalette([value for level in range(256) for value in (level, level, level)])
    save(root / "b" / "grey_palette.gif", grey_palette)
    save(root / "b" / "float.tif", Image.fromarray(np.full((4, 4), 0.5, np.float32)))
    manifest = prepare("image-folder", str(root), str(tmp_path / "out"), test_fraction=0, **QUIET)
    assert manifest["image_shape"] == [4, 4, 1] and manifest["converted"] == 5
    images, _ = load_split(str(tmp_path / "out"), "train")
    constants = sorted(int(image[0, 0, 0]) for image in images if (image == image[0, 0, 0]).all())
    assert constants == [3, 50, 100, 128, 255]
    assert any(set(np.unique(image)) == {0, 255} for image in images)  # the bilevel one
    assert load_split(str(tmp_path / "out"), "test")[0].shape == (0, 4, 4, 1)


def test_image_folder_train_test_dirs_are_the_splits(tmp_path):
    root = tmp_path / "split"
    for split, count in (("train", 3), ("test", 1)):
        for name in ("a", "b"):
            for index in range(count):
                save(root / split / name / f"{index}.png", Image.new("RGB", (5, 5), (index, 0, 0)))
    manifest = prepare("image-folder", str(root), str(tmp_path / "out"), **QUIET)
    assert manifest["splits"]["train"]["class_counts"] == {"a": 3, "b": 3}
    assert manifest["splits"]["test"]["class_counts"] == {"a": 1, "b": 1}


def test_loose_files_next_to_class_folders_are_skipped(tmp_path):
    root = tmp_path / "loose"
    for name in ("a", "b", "."):
        save(root / name / "x.png", Image.new("RGB", (4, 4)))
    manifest = prepare("image-folder", str(root), str(tmp_path / "out"), test_fraction=0, **QUIET)
    assert manifest["class_names"] == ["a", "b"] and manifest["kept"] == 2
    assert [entry["path"] for entry in manifest["skipped"]] == [f"{root}/x.png"]
    assert "--unlabeled" in manifest["skipped"][0]["reason"]


def make_numbered_folder(root: Path) -> None:
    """Class a: 10 images, class b: 20, each a constant image whose value is unique."""
    for name, values in (("a", range(10)), ("b", range(100, 120))):
        for value in values:
            save(root / name / f"{value}.png", Image.new("L", (3, 3), value))


def test_seeded_split_is_per_class_and_deterministic(tmp_path):
    root = tmp_path / "numbered"
    make_numbered_folder(root)

    def test_values(seed: int, out: str) -> list[int]:
        manifest = prepare("image-folder", str(root), str(tmp_path / out), test_fraction=0.2, seed=seed, **QUIET)
        assert manifest["splits"]["test"]["class_counts"] == {"a": 2, "b": 4}
        assert manifest["splits"]["train"]["class_counts"] == {"a": 8, "b": 16}
        images, labels = load_split(str(tmp_path / out), "test")
        assert all((values < 100) == (label == 0) for values, label in zip(images[:, 0, 0, 0], labels))
        return sorted(images[:, 0, 0, 0].tolist())

    assert test_values(0, "first") == test_values(0, "second")
    assert test_values(0, "first") != test_values(1, "third")


def test_strict_names_bad_file_and_writes_nothing(tmp_path):
    make_mixed_folder(tmp_path / "images")
    with pytest.raises(UserError, match="truncated.jpg") as caught:
        prepare("image-folder", str(tmp_path / "images"), str(tmp_path / "out"), image_size=8, strict=True, **QUIET)
    assert "notes.txt" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_all_bad_folder_raises_before_writing(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "empty.png").write_bytes(b"")
    (root / "page.jpg").write_text("<html></html>")
    with pytest.raises(UserError, match="no decodable images"):
        prepare("image-folder", str(root), str(tmp_path / "out"), **QUIET)
    assert not (tmp_path / "out").exists()


def test_unlabeled_folders(tmp_path):
    flat = tmp_path / "flat"
    for index in range(3):
        save(flat / f"{index}.png", Image.new("RGB", (4, 4)))
    manifest = prepare("image-folder", str(flat), str(tmp_path / "flat_out"), **QUIET)
    assert list(manifest["splits"]) == ["train"] and manifest["class_names"] == []
    assert load_split(str(tmp_path / "flat_out"), "train")[1].tolist() == [-1, -1, -1]
    with pytest.raises(UserError, match="no 'test' split"):
        split_files(str(tmp_path / "flat_out"), "test")
    make_numbered_folder(tmp_path / "numbered")
    manifest = prepare("image-folder", str(tmp_path / "numbered"), str(tmp_path / "out"), unlabeled=True, **QUIET)
    assert manifest["splits"]["train"]["count"] == 30 and list(manifest["splits"]) == ["train"]
    assert set(load_split(str(tmp_path / "out"), "train")[1].tolist()) == {-1}


# ---------------------------------------------------------------------------------------------- storage


def test_file_uri_output(idx_dir, tmp_path):
    directory, arrays = idx_dir
    uri = f"file://{tmp_path}/uri_out"
    prepare("mnist", str(directory), uri, **QUIET)
    assert split_files(uri, "train") == [f"{uri}/train/part-00000.parquet"]
    images, labels = load_split(uri, "test")
    np.testing.assert_array_equal(labels, arrays["test"][1])
    assert (tmp_path / "uri_out" / "manifest.json").is_file()


def test_prepare_replaces_previous_dataset(idx_dir, tmp_path):
    directory, _ = idx_dir
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-00007.parquet").write_bytes(b"stale")
    prepare("mnist", str(directory), str(out), **QUIET)
    assert sorted(path.name for path in (out / "train").iterdir()) == ["part-00000.parquet"]


def test_ensure_prepared_prepares_once_then_reuses(idx_dir, tmp_path, monkeypatch):
    directory, _ = idx_dir
    cache = tmp_path / "cache"
    messages = []
    uri = ensure_prepared("mnist", str(directory), str(cache), image_size=14, log=messages.append)
    assert uri == f"{cache}/mnist-14" and read_manifest(uri)["image_shape"] == [14, 14, 1]
    assert len(messages) == 2 and str(cache / "mnist-14") in messages[0] and messages[1] == f"dataset ready at {uri}"
    assert sorted(os.listdir(cache)) == ["mnist-14"]  # no temporary left behind

    def fail(*args, **kwargs):
        raise AssertionError("prepare must not run again")

    monkeypatch.setattr(cache_module, "prepare", fail)
    assert ensure_prepared("mnist", str(directory), str(cache), image_size=14, log=messages.append) == uri
    assert len(messages) == 2  # reused silently


def test_ensure_prepared_replaces_half_written_dir(idx_dir, tmp_path):
    directory, _ = idx_dir
    half = tmp_path / "cache" / "mnist" / "train"
    half.mkdir(parents=True)
    (half / "part-00000.parquet").write_bytes(b"half")
    uri = ensure_prepared("mnist", str(directory), str(tmp_path / "cache"), log=lambda message: None)
    assert load_split(uri, "train")[0].shape == (20, 28, 28, 1)


def test_ensure_prepared_failure_leaves_nothing(tmp_path):
    with pytest.raises(UserError):
        ensure_prepared("mnist", str(tmp_path / "missing"), str(tmp_path / "cache"), log=lambda message: None)
    assert not (tmp_path / "cache").exists() or os.listdir(tmp_path / "cache") == []


def test_ensure_prepared_keys_an_image_folder_cache_by_its_storage_mode(tmp_path, monkeypatch):
    """A folder cached as pixels under one auto rule is not reused once the rule resolves it to encoded
    (nor the other way round): the resolved storage mode is part of the cache name."""
    root = tmp_path / "images"
    for label, shade in (("a", 40), ("b", 200)):
        for number in range(4):
            save(root / label / f"{number}.png", Image.new("RGB", (8, 8), (shade, number * 10, 0)))
    cache = tmp_path / "cache"
    pixels = ensure_prepared("image-folder", str(root), str(cache), log=lambda message: None)
    assert read_manifest(pixels)["storage"] == "pixels"  # auto: small equal-size images

    from raysl.ingest import encoded

    monkeypatch.setattr(encoded, "choose_folder_mode", lambda *args: ("encoded", "auto: a later rule"))
    stored = ensure_prepared("image-folder", str(root), str(cache), log=lambda message: None)
    assert stored != pixels and read_manifest(stored)["storage"] == "encoded"
    assert read_manifest(pixels)["storage"] == "pixels"  # the other mode's copy is left as it was
    monkeypatch.undo()
    assert ensure_prepared("image-folder", str(root), str(cache), log=lambda message: None) == pixels


def test_prepare_on_first_use_names_the_final_directory_in_its_summary(idx_dir, tmp_path, capsys):
    """A kind prepared on first use (data.kind, as `raysl train` / `sweep` resolve it) is written to a
    .partial-* sibling and renamed: the printed summary line names where the dataset is, not the temporary
    directory (pixels and encoded)."""
    from raysl.config import RunConfig
    from raysl.ingest.resolve import resolve_data

    directory, _ = idx_dir
    cache = tmp_path / "cache"
    run = RunConfig.model_validate({"data": {"kind": "mnist", "source": str(directory), "cache_dir": str(cache)}})
    uri = resolve_data(run, log=lambda message: None)
    assert uri == str(cache / "mnist")
    (summary,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepared mnist")]
    assert summary.endswith(f"-> {uri}") and ".partial" not in summary

    root = tmp_path / "images"  # mixed sizes: auto stores them encoded
    for label in ("a", "b"):
        for number in range(3):
            save(root / label / f"{number}.png", Image.new("RGB", (8 + number, 10), (number * 40, 0, 0)))
    uri = ensure_prepared("image-folder", str(root), str(cache), log=lambda message: None)
    assert read_manifest(uri)["storage"] == "encoded"
    (summary,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("prepared image-folder")]
    assert f"-> {uri}" in summary and ".partial" not in summary
