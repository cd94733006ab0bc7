"""`embed`: a backbone's embeddings of a prepared dataset through real Ray Data, to Parquet. Every embedding is
checked against the backbone's own output on the same images computed here (pixels: the stored images; encoded:
the monitor's evaluation images), the labels against the stored ones; from an export and from a checkpoint;
the errors a user can make are UserErrors naming the path, before Ray starts."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import torch
import torch.nn.functional as F

from conftest import connected
from raysl.config import RunConfig
from raysl.data.eval_images import EvalImages
from raysl.errors import UserError
from raysl.outputs.export import export_backbone
from raysl.ingest.dataset import channels_of, load_split, read_manifest, split_labels
from raysl.io.storage import read_text
from raysl.ray_glue.embed import embed
from raysl.training.checkpoint import load_backbone
from raysl.training.loop import Trainer

MEAN, STD = 0.4, 0.25  # the checkpoint's recorded normalisation (not the dataset's): embed must use it


def _checkpoint(directory: Path, backbone: str, size: int, channels: int) -> str:
    """A trained-one-step checkpoint (batch-norm statistics moved) with a kNN figure, as tests/test_export.py makes."""
    run = RunConfig.model_validate({
        "model": {"backbone": backbone, "projector_hidden": 32, "projector_out": 16},
        "views": {"crops": [{"count": 2, "size": size}]}, "batch_size": 8, "epochs": 1,
    })
    trainer = Trainer(run, channels, [MEAN] * channels, [STD] * channels, steps_per_epoch=1)
    generator = torch.Generator().manual_seed(1)
    trainer.train_epoch([[torch.randint(0, 256, (8, channels, size, size), dtype=torch.uint8, generator=generator)
                          for _ in range(2)]])
    trainer.monitored = {"knn_top1": 0.5, "knn_epoch": 1}
    directory.mkdir(parents=True)
    trainer.save(directory)
    return str(directory)


@pytest.fixture(scope="module")
def gray(tmp_path_factory) -> tuple[str, str]:
    """(checkpoint, export) of a 1-channel small CNN at 28 px."""
    root = tmp_path_factory.mktemp("embed-gray")
    checkpoint = _checkpoint(root / "checkpoint", "small_cnn", 28, 1)
    export_backbone(checkpoint, str(root / "export"), log=lambda text: None)
    return checkpoint, str(root / "export")


def _expected(source: str, images: np.ndarray, channels: int) -> np.ndarray:
    """The backbone's own L2-normalised output on uint8 (N, H, W, C) images, float32, computed directly."""
    backbone = load_backbone(source)
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor([MEAN] * channels).view(1, -1, 1, 1), torch.tensor([STD] * channels).view(1, -1, 1, 1)
    with torch.no_grad():
        return F.normalize(backbone((x - mean) / std), dim=1).numpy()


def _read(out: Path, split: str) -> pd.DataFrame:
    frame = pd.read_parquet(out / "embeddings")
    return frame[frame["split"] == split].sort_values("index").reset_index(drop=True)


def _quiet(text: str) -> None:
    pass


def test_user_errors_name_the_path_before_ray_starts(tmp_path, tiny_dataset, encoded_dataset, gray):
    checkpoint, export = gray
    was = ray.is_initialized()
    out = str(tmp_path / "out")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(UserError, match=re.escape(f"{nothing}: neither a raysl export")):
        embed(str(nothing), tiny_dataset, out, log=_quiet)
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'missing'}: no such file")):
        embed(str(tmp_path / "missing"), tiny_dataset, out, log=_quiet)
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    (broken / "backbone.pt").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match=re.escape(f"{broken}: its backbone cannot be loaded")):
        embed(str(broken), tiny_dataset, out, log=_quiet)
    with pytest.raises(UserError, match=re.escape(f"no prepared dataset at {nothing}")):
        embed(export, str(nothing), out, log=_quiet)
    with pytest.raises(UserError, match=re.escape(f"--split val: {tiny_dataset} has no val split")):
        embed(export, tiny_dataset, out, split="val", log=_quiet)
    with pytest.raises(UserError, match=re.escape(f"{encoded_dataset} holds 3-channel images but {checkpoint}'s backbone takes 1")):
        embed(checkpoint, encoded_dataset, out, log=_quiet)
    with pytest.raises(UserError, match="--dtype bfloat16"):
        embed(export, tiny_dataset, out, dtype="bfloat16", log=_quiet)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.parquet").write_bytes(b"")
    with pytest.raises(UserError, match=re.escape(f"--out {tmp_path / 'full'} is not empty")):
        embed(export, tiny_dataset, str(tmp_path / "full"), log=_quiet)
    assert ray.is_initialized() == was and not Path(out).exists()


@pytest.mark.slow
def test_without_ray_running_embed_starts_its_own_and_stops_it_from_and_to_s3(tmp_path, tiny_dataset, gray, monkeypatch):
    # Before local_ray (file order): embed starts an embedded Ray (its workers inherit the S3 server's
    # environment), reads the shards from S3, writes the embeddings and embed.json there, and shuts Ray down.
    # No Ray is connected here between tests (every fixture that connects one disconnects at its end), so this
    # always runs: a Ray left connected is a failure, not a skip.
    assert not ray.is_initialized(), "a Ray connection was left open by an earlier test or fixture"
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # an embedded Ray, started after the S3 server's environment
    import pyarrow.fs as pafs
    from conftest import moto_s3

    _, export = gray
    with moto_s3("raysl-embed"):
        data, out = "s3://raysl-embed/data/tiny", "s3://raysl-embed/embeddings/tiny"
        pafs.copy_files(tiny_dataset, data)
        summary = embed(export, data, out, split="test", log=_quiet)
        assert summary["splits"] == {"test": 300} and summary["embeddings"] == f"{out}/embeddings" and not ray.is_initialized()
        filesystem, path = pafs.FileSystem.from_uri(f"{out}/embeddings")
        frame = pq.read_table(path, filesystem=filesystem).to_pandas().sort_values("index").reset_index(drop=True)
        assert json.loads(read_text(f"{out}/embed.json"))["splits"] == {"test": 300}
    images, labels = load_split(tiny_dataset, "test")
    assert np.array_equal(frame["index"], np.arange(300)) and np.array_equal(frame["label"], labels)
    np.testing.assert_allclose(np.stack(frame["embedding"].to_numpy()).astype(np.float32), _expected(export, images, 1),
                               atol=2e-3, rtol=0)


@pytest.fixture(scope="module")
def local_ray(shared_ray_address):
    with connected(shared_ray_address):  # the session's Ray (conftest), disconnected after this module
        yield


@pytest.mark.slow
def test_embeddings_of_an_export_are_the_backbones_features_float32(local_ray, tmp_path, tiny_dataset, gray, capfd):
    _, export = gray
    out = tmp_path / "out"
    lines = []
    summary = embed(export, tiny_dataset, str(out), dtype="float32", batch_size=128, log=lines.append)
    assert "Progress bars disabled" not in capfd.readouterr().err  # off a terminal raysl turned them off itself
    manifest = read_manifest(tiny_dataset)
    assert summary["splits"] == {"train": 2000, "test": 300} == {s: manifest["splits"][s]["count"] for s in ("train", "test")}
    assert summary["feature_dim"] == load_backbone(export).out_dim and summary["out"] == str(out)
    assert any("embedding 2300 rows" in line for line in lines) and "wrote 2300 embeddings" in lines[-1]
    schema = pq.read_schema(next((out / "embeddings").glob("*.parquet")))
    assert str(schema.field("embedding").type) == f"fixed_size_list<element: float>[{summary['feature_dim']}]"
    assert schema.names == ["index", "split", "label", "embedding"]
    document = json.loads((out / "embed.json").read_text())
    assert document["knn_top1"] == 0.5 and document["knn_epoch"] == 1 and document["dtype"] == "float32"
    assert document["splits"] == summary["splits"] and document["input"]["shape"] == [28, 28, 1]
    for split in ("train", "test"):
        frame = _read(out, split)
        images, labels = load_split(tiny_dataset, split)
        assert np.array_equal(frame["index"], np.arange(len(images))) and np.array_equal(frame["label"], labels)
        embeddings = np.stack(frame["embedding"].to_numpy())
        assert embeddings.dtype == np.float32 and embeddings.shape == (len(images), summary["feature_dim"])
        np.testing.assert_allclose(embeddings, _expected(export, images, 1), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_embeddings_of_a_checkpoint_float16_one_split(local_ray, tmp_path, tiny_dataset, gray):
    checkpoint, _ = gray
    out = tmp_path / "out"
    summary = embed(checkpoint, tiny_dataset, str(out), split="test", log=_quiet)
    assert summary["splits"] == {"test": 300} and summary["source_kind"] == "checkpoint"
    frame = pd.read_parquet(out / "embeddings")
    assert set(frame["split"]) == {"test"} and len(frame) == 300
    frame = _read(out, "test")
    images, labels = load_split(tiny_dataset, "test")
    assert np.array_equal(frame["label"], labels)
    embeddings = np.stack(frame["embedding"].to_numpy())
    assert embeddings.dtype == np.float16
    np.testing.assert_allclose(embeddings.astype(np.float32), _expected(checkpoint, images, 1), atol=2e-3, rtol=0)


@pytest.mark.slow
def test_an_encoded_dataset_is_embedded_as_the_monitor_sees_it(local_ray, tmp_path, encoded_dataset):
    manifest = read_manifest(encoded_dataset)
    channels = channels_of(manifest)
    checkpoint = _checkpoint(tmp_path / "checkpoint", "small_cnn", 32, channels)
    out = tmp_path / "out"
    summary = embed(checkpoint, encoded_dataset, str(out), dtype="float32", batch_size=64, log=_quiet)
    assert summary["splits"] == {split: entry["count"] for split, entry in manifest["splits"].items()}
    assert summary["input"]["shape"] == [32, 32, channels] and summary["input"]["crop_fraction"] == 0.875
    for split, entry in manifest["splits"].items():
        frame = _read(out, split)
        assert np.array_equal(frame["index"], np.arange(entry["count"]))
        # the monitor's own evaluation images: short side to 32 / 0.875, centre crop 32
        images = EvalImages(encoded_dataset, manifest, split, (32, 32, channels), np.arange(entry["count"])).array()
        embeddings = np.stack(frame["embedding"].to_numpy())
        np.testing.assert_allclose(embeddings, _expected(checkpoint, images, channels), atol=1e-5, rtol=0)
        assert np.array_equal(frame["label"], split_labels(encoded_dataset, manifest, split, ["label"])["label"])


@pytest.mark.slow
def test_a_damaged_shard_is_named_not_a_ray_traceback(local_ray, tmp_path, tiny_dataset, gray):
    _, export = gray
    copy = tmp_path / "damaged"
    shutil.copytree(tiny_dataset, copy)
    shard = read_manifest(str(copy))["splits"]["test"]["shards"][0]
    data = bytearray((copy / shard).read_bytes())
    data[len(data) // 3: len(data) // 3 + 20000] = bytes(20000)  # a zeroed range, the size unchanged
    (copy / shard).write_bytes(bytes(data))
    with pytest.raises(UserError, match=re.escape(f"{copy}/{shard}")) as caught:
        embed(export, str(copy), str(tmp_path / "out"), split="test", log=_quiet)
    assert "Traceback" not in str(caught.value)
    assert not (tmp_path / "out" / "embeddings").exists()  # nothing partial left: the same --out can be used again


def test_splits_labels_and_shard_paths_without_ray(tiny_dataset):
    from raysl.outputs.embedding import chosen_splits, label_columns, split_of_shards, splits_of_paths

    manifest = read_manifest(tiny_dataset)
    assert chosen_splits(manifest, tiny_dataset, "all") == ["train", "test"]
    assert chosen_splits(manifest, tiny_dataset, "test, train,test") == ["test", "train"]
    assert label_columns(manifest) == ["label"]
    assert label_columns({**manifest, "class_names": [], "label_sets": {"label": []}}) == []  # unlabeled: no label column
    assert label_columns({**manifest, "label_sets": {"label": ["a"], "label_coarse": ["b"]}}) == ["label", "label_coarse"]
    shards = split_of_shards(manifest, ["train", "test"])
    paths = ["bucket/data/test/part-00000.parquet", f"{tiny_dataset}/train/part-00000.parquet",
             "bucket/data/test/part-00000.parquet"]  # Ray gives s3 paths without the scheme
    assert list(splits_of_paths(paths, shards)) == ["test", "train", "test"]


@pytest.mark.slow
def test_a_user_error_inside_a_ray_task_comes_out_as_itself(local_ray, tmp_path, tiny_dataset, gray):
    # A manifest whose image_shape does not match its shards' pixels: raysl's own reader raises a UserError in the
    # decode task; embed raises that message, not Ray's wrapping of it.
    _, export = gray
    copy = tmp_path / "reshaped"
    shutil.copytree(tiny_dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["image_shape"] = [14, 14, 1]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match=r"^a shard's images do not match image_shape \[14, 14, 1\]") as caught:
        embed(export, str(copy), str(tmp_path / "out"), split="test", log=_quiet)
    assert "Traceback" not in str(caught.value) and "RayTaskError" not in str(caught.value)
