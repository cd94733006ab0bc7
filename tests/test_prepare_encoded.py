"""Tests for `raysl prepare`'s encoded storage, folder layouts, --classes, Parquet and WebDataset sources."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from raysl.cli import build_parser
from raysl.ingest.dataset import load_labels, load_split, read_manifest, split_files
from raysl.ingest.prepare import prepare
from raysl.ingest.synthetic import make_folder
from raysl.errors import UserError

QUIET = {"progress": False, "workers": 2}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def imagenet_like(tmp_path_factory) -> Path:
    """make_folder's ImageNet layout: train/<class>/..., val/<class>/... (60 + 20 images, 10 classes)."""
    return make_folder(tmp_path_factory.mktemp("synthetic") / "f", train=60, val=20, min_side=60, max_side=200, seed=3)


def copy_tree(source: Path, target: Path, rename: dict[str, str] | None = None) -> Path:
    for path in source.rglob("*"):
        if path.is_file():
            relative = path.relative_to(source)
            top = (rename or {}).get(relative.parts[0], relative.parts[0])
            destination = target / top / Path(*relative.parts[1:])
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(path.read_bytes())
    return target


def rows(out: Path | str, split: str) -> pa.Table:
    manifest = read_manifest(str(out))
    return pa.concat_tables([pq.read_table(Path(out) / shard) for shard in manifest["splits"][split]["shards"]])


def source_classes(folder: Path) -> dict[str, str]:
    """sha256 of each source file's bytes -> its class folder name."""
    return {hashlib.sha256(path.read_bytes()).hexdigest(): path.parent.name for path in folder.rglob("*") if path.is_file()}


def save(path: Path, image: Image.Image, image_format: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=image_format, **options)
    return path


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- layouts


def test_imagenet_layout_val_is_test_and_flat_test_is_skipped(imagenet_like, tmp_path):
    root = copy_tree(imagenet_like, tmp_path / "in")
    for index in range(3):  # ImageNet's unlabeled test/: flat files
        save(root / "test" / f"t{index}.JPEG", noise(30, 30, index), "JPEG")
    out = tmp_path / "out"
    manifest = prepare("image-folder", str(root), str(out), **QUIET)
    assert manifest["storage"] == "encoded" and manifest["image_shape"] is None
    assert manifest["split_folders"] == {"train": "train", "test": "val", "ignored": ["test"]}
    assert any("test/" in note and "not usable" in note for note in manifest["notes"])
    assert manifest["splits"]["train"]["count"] == 60 and manifest["splits"]["test"]["count"] == 20
    names = sorted(path.name for path in (imagenet_like / "train").iterdir())
    assert manifest["class_names"] == names and manifest["class_ids"] == {name: i for i, name in enumerate(names)}
    by_hash = source_classes(imagenet_like)
    for split in ("train", "test"):
        table = rows(out, split)
        assert table.column_names == ["image", "width", "height", "label", "index"]
        assert table.column("index").to_pylist() == list(range(table.num_rows))
        checked = 0
        for data, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist()):
            name = by_hash.get(hashlib.sha256(data).hexdigest())
            if name is not None:  # kept byte-for-byte (all but the EXIF-rotated ones)
                assert manifest["class_names"][label] == name
                checked += 1
        assert checked >= 0.8 * table.num_rows
    counts = {name: len(list((imagenet_like / "val" / name).iterdir())) for name in names}
    assert manifest["splits"]["test"]["class_counts"] == counts


@pytest.mark.parametrize("val_name", ["Val", "VALIDATION"])
def test_split_folder_names_any_case_both_modes(imagenet_like, tmp_path, val_name):
    root = copy_tree(imagenet_like, tmp_path / "in", rename={"val": val_name, "train": "Train"})
    for mode_options in ({}, {"image_size": 16}):
        out = tmp_path / f"out{len(mode_options)}"
        manifest = prepare("image-folder", str(root), str(out), **mode_options, **QUIET)
        assert manifest["storage"] == ("pixels" if mode_options else "encoded")
        assert manifest["split_folders"]["train"] == "Train" and manifest["split_folders"]["test"] == val_name
        assert manifest["splits"]["train"]["count"] == 60 and manifest["splits"]["test"]["count"] == 20
        assert val_name not in manifest["class_names"] and len(manifest["class_names"]) == 10
    labels = load_labels(str(tmp_path / "out1"), "test")
    images, pixel_labels = load_split(str(tmp_path / "out1"), "test")
    assert images.shape == (20, 16, 16, 3) and sorted(labels.tolist()) == sorted(pixel_labels.tolist())


def test_only_train_folder_is_split_by_fraction_and_further_held_out_ignored(imagenet_like, tmp_path):
    only_train = copy_tree(imagenet_like / "train", tmp_path / "a" / "train")
    manifest = prepare("image-folder", str(only_train.parent), str(tmp_path / "out_a"), test_fraction=0.25, **QUIET)
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 60
    assert 10 <= manifest["splits"]["test"]["count"] <= 20
    root = copy_tree(imagenet_like, tmp_path / "b", rename={"val": "validation"})
    copy_tree(imagenet_like / "val", root / "test")
    manifest = prepare("image-folder", str(root), str(tmp_path / "out_b"), **QUIET)
    assert manifest["split_folders"] == {"train": "train", "test": "validation", "ignored": ["test"]}
    assert manifest["splits"]["test"]["count"] == 20


def test_nested_class_folder_is_refused(tmp_path):
    root = tmp_path / "nested"
    save(root / "train" / "cats" / "a.png", noise(8, 8))
    save(root / "train" / "dogs" / "puppies" / "b.png", noise(8, 8))
    for mode in ("encoded", "pixels"):
        with pytest.raises(UserError, match=r"class folder .*train/dogs holds further folders"):
            prepare("image-folder", str(root), str(tmp_path / "out"), mode=mode, **QUIET)
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_classes_file_keeps_a_subset_with_the_same_ids(imagenet_like, tmp_path):
    names = sorted(path.name for path in (imagenet_like / "train").iterdir())
    wanted = [names[7], names[2], names[5]]
    listing = tmp_path / "classes.txt"
    listing.write_text(f"# three classes\n{wanted[0]}\n\n  {wanted[1]}\n{wanted[2]}\n")
    manifest = prepare("image-folder", str(imagenet_like), str(tmp_path / "out"), classes=str(listing), **QUIET)
    assert manifest["class_names"] == sorted(wanted)
    assert manifest["class_ids"] == {name: index for index, name in enumerate(sorted(wanted))}
    by_hash = source_classes(imagenet_like)
    for split in ("train", "test"):
        table = rows(tmp_path / "out", split)
        assert set(table.column("label").to_pylist()) <= {0, 1, 2}
        for data, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist()):
            if hashlib.sha256(data).hexdigest() in by_hash:
                assert by_hash[hashlib.sha256(data).hexdigest()] == sorted(wanted)[label]
        expected = sum(len(list((imagenet_like / ("val" if split == "test" else "train") / name).iterdir()))
                       for name in wanted)
        assert table.num_rows == expected
    listing.write_text(f"{wanted[0]}\nno_such_class\n")
    with pytest.raises(UserError, match=rf"{listing}.*no_such_class"):
        prepare("image-folder", str(imagenet_like), str(tmp_path / "out2"), classes=str(listing), **QUIET)


# ---------------------------------------------------------------------------------------------- encoding


def exif_rotated_jpeg(path: Path) -> Image.Image:
    """A 60x40 (WxH) upright image stored as 40x60 pixels with EXIF orientation 6 (rotate 90 clockwise)."""
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:20, :30] = (230, 20, 20)  # a red top-left quadrant, the rest dark blue
    pixels[pixels.sum(axis=2) == 0] = (10, 10, 120)
    upright = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    save(path, upright.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes())
    return upright


def test_encoded_round_trip_keeps_or_converts(tmp_path):
    root = tmp_path / "mixed"
    plain = save(root / "a" / "plain.jpg", noise(100, 80), "JPEG", quality=85)
    gray = save(root / "a" / "gray.jpg", noise(50, 70).convert("L"), "JPEG")
    upright = exif_rotated_jpeg(root / "a" / "rotated.jpg")
    save(root / "a" / "cmyk.jpg", Image.new("CMYK", (20, 30), (0, 255, 0, 0)), "JPEG")
    save(root / "b" / "sixteen.png", Image.fromarray(np.full((12, 16), 257 * 100, np.uint16)))
    save(root / "b" / "palette.png", noise(24, 24).convert("P", palette=Image.Palette.ADAPTIVE))
    save(root / "b" / "la.png", Image.new("LA", (10, 10), (77, 0)))
    save(root / "b" / "wide.png", noise(1200, 600))
    save(root / "b" / "big.jpg", noise(300, 900), "JPEG")
    save(root / "b" / "image.bmp", noise(30, 20))
    (root / "b" / "truncated.jpg").write_bytes(plain.read_bytes()[:200])
    out = tmp_path / "out"
    manifest = prepare("image-folder", str(root), str(out), test_fraction=0, **QUIET)
    assert manifest["max_side"] == 512 and manifest["quality"] == 90 and manifest["channels"] == 3
    assert [Path(entry["path"]).name for entry in manifest["skipped"]] == ["truncated.jpg"]
    table = rows(out, "train")
    assert table.num_rows == 10 and manifest["kept"] == 10 and manifest["converted"] == 8
    stored = {}
    for data, width, height in zip(*(table.column(name).to_pylist() for name in ("image", "width", "height"))):
        image = Image.open(io.BytesIO(data))
        assert image.size == (width, height) and image.mode in ("RGB", "L")
        assert image.format in ("JPEG", "PNG") and image.getexif().get(0x0112, 1) == 1
        assert max(width, height) <= 512
        stored[data] = image
    assert plain.read_bytes() in stored and gray.read_bytes() in stored  # kept byte-for-byte
    by_size = {image.size: image for image in stored.values()}
    rotated = by_size[(60, 40)]  # upright: width and height swapped back
    assert rotated.format == "JPEG"
    difference = np.abs(np.asarray(rotated, np.int16) - np.asarray(upright, np.int16)).mean()
    assert difference < 6  # re-encoded, upright (a wrong turn would not even have this shape)
    assert by_size[(20, 30)].mode == "RGB" and by_size[(20, 30)].format == "JPEG"  # CMYK -> RGB JPEG
    assert np.asarray(by_size[(20, 30)])[..., 1].mean() < 60  # magenta stays magenta (no green)
    sixteen = by_size[(16, 12)]
    assert sixteen.format == "PNG" and sixteen.mode == "L" and (np.asarray(sixteen) == 100).all()
    assert by_size[(24, 24)].format == "PNG" and by_size[(24, 24)].mode == "RGB"
    assert by_size[(10, 10)].mode == "L" and (np.asarray(by_size[(10, 10)]) == 77).all()  # LA: alpha dropped
    assert by_size[(512, 256)].format == "PNG"  # 1200x600 resized, aspect kept
    assert by_size[(171, 512)].format == "JPEG"  # 300x900 -> long side 512
    assert by_size[(30, 20)].format == "PNG"  # BMP: lossless source -> PNG
    for name in ("width", "height"):
        values = table.column(name).to_numpy()
        assert manifest["sizes"][name] == [values.min(), int(np.median(values)), values.max()]
    assert manifest["sizes"]["width"] == [10, 40, 512]
    with pytest.raises(UserError, match="encoded dataset.*raysl.views.decode"):
        load_split(str(out), "train")
    assert sorted(load_labels(str(out), "train").tolist()) == sorted(table.column("label").to_pylist())


def test_max_side_zero_keeps_large_images(tmp_path):
    root = tmp_path / "big"
    big = save(root / "a" / "big.jpg", noise(900, 300), "JPEG")
    save(root / "a" / "small.png", noise(30, 40))
    manifest = prepare("image-folder", str(root), str(tmp_path / "out"), max_side=0, test_fraction=0, **QUIET)
    assert manifest["max_side"] is None and manifest["converted"] == 0
    assert big.read_bytes() in rows(tmp_path / "out", "train").column("image").to_pylist()


def test_all_gray_folder_has_one_channel_and_stats_match(tmp_path):
    root = tmp_path / "gray"
    for index in range(6):
        size = (20 + 7 * index, 30 + 3 * index)
        save(root / f"c{index % 2}" / f"{index}.jpg", noise(*size, seed=index).convert("L"), "JPEG")
    save(root / "c0" / "sixteen.png", Image.fromarray(np.full((9, 11), 65535, np.uint16)))
    manifest = prepare("image-folder", str(root), str(tmp_path / "out"), test_fraction=0, **QUIET)
    assert manifest["channels"] == 1 and len(manifest["mean"]) == 1
    pixels = np.concatenate([np.asarray(Image.open(io.BytesIO(data))).ravel()
                             for data in rows(tmp_path / "out", "train").column("image").to_pylist()])
    assert manifest["mean"][0] == pytest.approx(pixels.mean() / 255, abs=1e-6)
    assert manifest["std"][0] == pytest.approx(pixels.std() / 255, abs=1e-6)


def test_color_stats_match_decoded_train_images(imagenet_like, tmp_path):
    manifest = prepare("image-folder", str(imagenet_like), str(tmp_path / "out"), **QUIET)
    assert manifest["channels"] == 3
    pixels = np.concatenate([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).reshape(-1, 3)
                             for data in rows(tmp_path / "out", "train").column("image").to_pylist()])
    np.testing.assert_allclose(manifest["mean"], pixels.mean(axis=0) / 255, atol=2e-3)
    np.testing.assert_allclose(manifest["std"], pixels.std(axis=0) / 255, atol=2e-3)


def test_strict_fails_without_manifest(tmp_path):
    root = tmp_path / "bad"
    save(root / "a" / "ok.jpg", noise(70, 70), "JPEG")
    (root / "a" / "page.jpg").write_text("<html></html>")
    with pytest.raises(UserError, match="(?s)--strict.*page.jpg"):
        prepare("image-folder", str(root), str(tmp_path / "out"), strict=True, mode="encoded", **QUIET)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not (tmp_path / "out" / "train").exists()
    with pytest.raises(UserError, match="no prepared dataset"):
        read_manifest(str(tmp_path / "out"))


def test_files_entries_match_the_shards(imagenet_like, idx_source, tmp_path):
    for kind, source, options in (("image-folder", imagenet_like, {"shard_rows": 16, "row_group_rows": 5}),
                                  ("mnist", idx_source, {})):
        out = tmp_path / kind
        manifest = prepare(kind, str(source), str(out), **options, **QUIET)
        shards = [shard for split in manifest["splits"].values() for shard in split["shards"]]
        assert sorted(manifest["files"]) == sorted(shards)
        for shard, entry in manifest["files"].items():
            content = (out / shard).read_bytes()
            assert entry["bytes"] == len(content) and entry["sha256"] == hashlib.sha256(content).hexdigest()
            metadata = pq.read_metadata(out / shard)
            assert (entry["rows"], entry["row_groups"]) == (metadata.num_rows, metadata.num_row_groups)
        assert sum(entry["rows"] for entry in manifest["files"].values()) == manifest["kept"]
    encoded_manifest = read_manifest(str(tmp_path / "image-folder"))
    assert len(encoded_manifest["splits"]["train"]["shards"]) == 4  # 60 rows, 16 a shard
    assert encoded_manifest["files"]["train/part-00000.parquet"]["row_groups"] == 4  # 5 + 5 + 5 + 1
    pixel_manifest = read_manifest(str(tmp_path / "mnist"))
    assert pixel_manifest["storage"] == "pixels" and pixel_manifest["channels"] == 1


@pytest.fixture
def idx_source(tmp_path) -> Path:
    from tests.conftest import make_idx_source

    return make_idx_source(tmp_path / "idx", train=40, test=10)


def test_auto_mode_picks_pixels_for_small_equal_images(tmp_path):
    small = tmp_path / "small"
    for index in range(12):
        save(small / f"c{index % 3}" / f"{index}.png", noise(28, 28, index))
    manifest = prepare("image-folder", str(small), str(tmp_path / "out"), **QUIET)
    assert manifest["storage"] == "pixels" and manifest["image_shape"] == [28, 28, 3]
    assert "28x28" in manifest["mode_reason"]
    save(small / "c0" / "other.png", noise(30, 28))
    manifest = prepare("image-folder", str(small), str(tmp_path / "out2"), **QUIET)
    assert manifest["storage"] == "encoded" and "2 sizes" in manifest["mode_reason"]
    big = tmp_path / "big"
    for index in range(4):
        save(big / "c" / f"{index}.png", noise(100, 100, index))
    assert prepare("image-folder", str(big), str(tmp_path / "out3"), **QUIET)["storage"] == "encoded"
    with pytest.raises(UserError, match="--image-size"):
        prepare("image-folder", str(big), str(tmp_path / "out4"), image_size=8, mode="encoded", **QUIET)


def test_old_manifest_without_new_keys_still_reads(idx_source, tmp_path):
    out = tmp_path / "old"
    prepare("mnist", str(idx_source), str(out), **QUIET)
    manifest = json.loads((out / "manifest.json").read_text())
    for key in ("storage", "channels", "files", "class_ids", "split_folders", "sizes", "max_side", "quality"):
        manifest.pop(key)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert load_split(str(out), "train")[0].shape == (40, 28, 28, 1)


# ---------------------------------------------------------------------------------------------- external sources


def folder_files(folder: Path, split: str) -> list[tuple[bytes, str]]:
    return [(path.read_bytes(), path.parent.name) for path in sorted((folder / split).rglob("*")) if path.is_file()]


def test_parquet_source_hub_layout(imagenet_like, tmp_path):
    names = sorted(path.name for path in (imagenet_like / "train").iterdir())
    metadata = {b"huggingface": json.dumps({"info": {"features": {
        "image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": names}}}}).encode()}
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("label", pa.int64())], metadata=metadata)
    data = tmp_path / "hub" / "data"
    data.mkdir(parents=True)

    def write(name: str, pairs: list[tuple[bytes, str]], labelled: bool = True) -> None:
        images = [{"bytes": content, "path": f"{index}.JPEG"} for index, (content, _) in enumerate(pairs)]
        labels = [names.index(name_) if labelled else None for _, name_ in pairs]
        pq.write_table(pa.table({"image": images, "label": labels}, schema=schema), data / name, row_group_size=7)

    train = folder_files(imagenet_like, "train")
    val = folder_files(imagenet_like, "val")
    write("train-00000-of-00002.parquet", train[:30])
    write("train-00001-of-00002.parquet", train[30:] + [(b"not an image", names[0])])
    write("validation-00000-of-00001.parquet", val)
    write("test-00000-of-00001.parquet", val[:5], labelled=False)
    out = tmp_path / "out"
    manifest = prepare("parquet", str(tmp_path / "hub"), str(out), shuffle_buffer=8, **QUIET)
    assert manifest["storage"] == "encoded" and manifest["kind"] == "parquet"
    assert manifest["class_names"] == names
    assert manifest["split_folders"] == {"train": "train", "test": "validation", "ignored": ["test"]}
    assert manifest["splits"]["train"]["count"] == 60 and manifest["splits"]["test"]["count"] == 20
    assert len(manifest["skipped"]) == 1 and "train-00001-of-00002.parquet row 30" in manifest["skipped"][0]["path"]
    by_hash = {hashlib.sha256(content).hexdigest(): name for content, name in train + val}
    for split in ("train", "test"):
        table = rows(out, split)
        kept = [(by_hash.get(hashlib.sha256(content).hexdigest()), label)
                for content, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist())]
        assert sum(name is not None for name, _ in kept) >= 0.8 * len(kept)
        assert all(names[label] == name for name, label in kept if name is not None)
    first = rows(out, "train").column("label").to_pylist()
    assert first != sorted(first)  # rows are mixed


def test_parquet_source_binary_string_labels_split_by_fraction(imagenet_like, tmp_path):
    train = folder_files(imagenet_like, "train")
    (tmp_path / "flat").mkdir()
    pq.write_table(pa.table({"jpeg": pa.array([content for content, _ in train], pa.binary()),
                             "cls": [name for _, name in train]}), tmp_path / "flat" / "all.parquet")
    manifest = prepare("parquet", str(tmp_path / "flat" / "*.parquet"), str(tmp_path / "out"), image_column="jpeg",
                       label_column="cls", test_fraction=0.2, **QUIET)
    assert manifest["class_names"] == sorted({name for _, name in train})
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["test"]["count"] == 60
    assert all(count >= 1 for count in manifest["splits"]["train"]["class_counts"].values())
    with pytest.raises(UserError, match="no column 'image'.*--image-column"):
        prepare("parquet", str(tmp_path / "flat"), str(tmp_path / "out2"), **QUIET)


def test_webdataset_source(imagenet_like, tmp_path):
    names = sorted(path.name for path in (imagenet_like / "train").iterdir())
    shards = tmp_path / "wds"
    shards.mkdir()

    def write(name: str, pairs: list[tuple[bytes, str]], label_as: str) -> None:
        with tarfile.open(shards / name, "w") as tar:
            for index, (content, class_name) in enumerate(pairs):
                members = {"jpg": content}
                if label_as == "cls":
                    members["cls"] = str(names.index(class_name)).encode()
                else:
                    members["json"] = json.dumps({"label": names.index(class_name)}).encode()
                for extension, payload in members.items():
                    info = tarfile.TarInfo(f"sample{index:05d}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))

    train, val = folder_files(imagenet_like, "train"), folder_files(imagenet_like, "val")
    write("train-000000.tar", train[:35], "cls")
    write("train-000001.tar", train[35:], "json")
    write("val-000000.tar", val, "cls")
    out = tmp_path / "out"
    manifest = prepare("webdataset", str(shards), str(out), **QUIET)
    assert manifest["split_folders"]["test"] == "val"
    assert manifest["splits"]["train"]["count"] == 60 and manifest["splits"]["test"]["count"] == 20
    assert manifest["class_names"] == [str(index) for index in range(10)]
    by_hash = {hashlib.sha256(content).hexdigest(): names.index(name) for content, name in train + val}
    table = rows(out, "train")
    matched = [(by_hash[hashlib.sha256(content).hexdigest()], label)
               for content, label in zip(table.column("image").to_pylist(), table.column("label").to_pylist())
               if hashlib.sha256(content).hexdigest() in by_hash]
    assert len(matched) >= 48 and all(expected == label for expected, label in matched)
    assert split_files(str(out), "test") == [f"{out}/test/part-00000.parquet"]


def test_cli_prepare_encoded(imagenet_like, tmp_path, capsys):
    args = build_parser().parse_args(["prepare", "image-folder", str(imagenet_like), "--out", str(tmp_path / "out"),
                                      "--max-side", "100", "--quality", "80", "--no-progress", "--workers", "2"])
    args.handler(args)
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["max_side"] == 100 and manifest["quality"] == 80 and manifest["sizes"]["width"][2] <= 100
    assert "encoded, max side 100, JPEG quality 80" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import resource, sys
    from raysl.ingest.prepare import prepare
    prepare("image-folder", sys.argv[1], sys.argv[2], progress=False, workers=2, shard_rows=100, row_group_rows=32)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def test_prepare_memory_does_not_grow_with_dataset_size(tmp_path):
    peaks = {}
    for count in (300, 1500):
        folder = make_folder(tmp_path / f"f{count}", train=count, val=count // 10, min_side=60, max_side=200, seed=count)
        result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(folder), str(tmp_path / f"out{count}")],
                                capture_output=True, text=True, cwd=ROOT, check=True)
        peaks[count] = int(result.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is KiB on Linux
        manifest = read_manifest(str(tmp_path / f"out{count}"))
        assert manifest["kept"] == count + count // 10
        assert len(manifest["splits"]["train"]["shards"]) == -(-count // 100)
    print(f"peak RSS of prepare: {peaks[300]:.1f} MB at 330 images, {peaks[1500]:.1f} MB at 1650 images")
    assert peaks[1500] < peaks[300] + 25
