"""`raysl export`: a checkpoint's backbone alone, loadable by torchvision (or raysl's small CNN), with model.json;
TorchScript and ONNX parity; load_backbone from an export or a checkpoint."""

from __future__ import annotations

import json
import sys

import pytest
import torch
import torchvision

import raysl
from raysl.cli import main
from raysl.config import RunConfig
from raysl.errors import UserError
from raysl.outputs.export import export_backbone
from raysl.training.loop import Trainer


def _checkpoint(tmp_path, backbone: str, size: int, channels: int, **model) -> tuple[Trainer, str]:
    run = RunConfig.model_validate({
        "model": {"backbone": backbone, "projector_hidden": 32, "projector_out": 16, **model},
        "views": {"crops": [{"count": 2, "size": size}]}, "batch_size": 8, "epochs": 1,
    })
    trainer = Trainer(run, channels, [0.4] * channels, [0.25] * channels, steps_per_epoch=1)
    generator = torch.Generator().manual_seed(1)
    views = [torch.randint(0, 256, (8, channels, size, size), dtype=torch.uint8, generator=generator) for _ in range(2)]
    trainer.train_epoch([views])  # batch-norm statistics move: the export must carry them
    trainer.monitored = {"knn_top1": 0.5, "knn_epoch": 1}
    directory = tmp_path / "checkpoint"
    directory.mkdir()
    trainer.save(directory)
    return trainer, str(directory)


@pytest.mark.parametrize("backbone, size, channels, stem", [
    ("small_cnn", 28, 1, "auto"), ("resnet18", 64, 3, "imagenet"), ("resnet18", 32, 1, "auto"),
])
def test_export_round_trip_gives_the_checkpoints_features(tmp_path, backbone, size, channels, stem):
    trainer, checkpoint = _checkpoint(tmp_path, backbone, size, channels, stem=stem)
    out = tmp_path / "export"
    main(["export", checkpoint, "--out", str(out), "--format", "torchscript"])
    document = json.loads((out / "model.json").read_text())
    assert document["backbone"] == backbone and document["epoch"] == 1 and document["knn_top1"] == 0.5
    assert document["input"]["channels"] == channels and document["input"]["size"] == size
    assert document["input"]["mean"] == pytest.approx([0.4] * channels) and document["feature_dim"] == trainer.method.backbone.out_dim
    assert document["config"]["model"]["backbone"] == backbone and document["torchscript_max_abs_difference"] < 1e-4
    images = torch.randn(3, channels, size, size)
    original = trainer.method.backbone.eval()
    with torch.no_grad():
        expected = original(images)
        assert torch.allclose(raysl.load_backbone(str(out))(images), expected, atol=1e-5)
        assert torch.allclose(raysl.load_backbone(checkpoint)(images), expected, atol=1e-5)
        assert torch.allclose(torch.jit.load(str(out / "backbone.torchscript.pt"))(images), expected, atol=1e-4)
    if backbone == "resnet18":  # torchvision's own model takes the weights (stem as trained)
        reference = torchvision.models.get_model("resnet18", weights=None)
        if document["stem"] == "cifar":
            reference.conv1 = torch.nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
            reference.maxpool = torch.nn.Identity()
        missing, unexpected = reference.load_state_dict(torch.load(out / "backbone.pt", weights_only=True), strict=False)
        assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
        reference.fc = torch.nn.Identity()
        with torch.no_grad():
            assert torch.allclose(reference.eval()(images), expected, atol=1e-5)


@pytest.mark.parametrize("backbone, size, channels, stem", [("small_cnn", 28, 1, "auto"), ("resnet18", 64, 3, "imagenet")])
def test_onnx_export_gives_the_backbones_features_in_onnxruntime_at_any_batch_size(tmp_path, backbone, size, channels, stem):
    import onnxruntime

    trainer, checkpoint = _checkpoint(tmp_path, backbone, size, channels, stem=stem)
    out = tmp_path / "export"
    document = export_backbone(checkpoint, str(out), ("state_dict", "onnx"), log=lambda line: None)
    assert document["files"] == {"state_dict": "backbone.pt", "onnx": "backbone.onnx"}
    assert json.loads((out / "model.json").read_text())["onnx_max_abs_difference"] == document["onnx_max_abs_difference"] < 1e-4
    session = onnxruntime.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    images = torch.randn(5, channels, size, size)  # exported with a batch of 4, checked on 3
    with torch.no_grad():
        expected = trainer.method.backbone.eval()(images)
    assert torch.allclose(torch.from_numpy(session.run(None, {"images": images.numpy()})[0]), expected, atol=1e-4)


def test_onnx_export_without_its_packages_says_what_to_install_and_writes_nothing(tmp_path, monkeypatch):
    _, checkpoint = _checkpoint(tmp_path, "small_cnn", 28, 1)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    with pytest.raises(UserError, match=r"pip install 'raysl\[onnx\]'"):
        export_backbone(checkpoint, str(tmp_path / "export"), ("state_dict", "onnx"))
    assert not (tmp_path / "export").exists()


def test_export_of_something_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no checkpoint there"):
        raysl.export(str(tmp_path), str(tmp_path / "out"))


def test_init_from_an_export_or_a_checkpoint_with_another_method(tmp_path):
    trainer, checkpoint = _checkpoint(tmp_path, "small_cnn", 28, 1)  # SimCLR
    raysl.export(checkpoint, str(tmp_path / "export"))
    pretrained = trainer.method.backbone.state_dict()
    for source in (str(tmp_path / "export"), checkpoint):
        run = RunConfig.model_validate({
            "model": {"projector_hidden": 32, "projector_out": 16}, "method": {"name": "moco", "queue_size": 64},
            "views": {"crops": [{"count": 2, "size": 28}]}, "batch_size": 8, "epochs": 1, "init_from": source,
        })
        moco = Trainer(run, 1, [0.4], [0.25], steps_per_epoch=1).method
        assert all(torch.equal(value, pretrained[key]) for key, value in moco.backbone.state_dict().items())
        key_backbone = moco.key_encoder[0].state_dict()  # the momentum encoder starts as a copy, not random
        assert all(torch.equal(value, pretrained[key]) for key, value in key_backbone.items())


def test_init_from_weights_that_do_not_fit_names_the_keys(tmp_path, tiny_dataset):
    from raysl.training.preflight import check_init_from

    _, checkpoint = _checkpoint(tmp_path, "small_cnn", 28, 1, width=8)
    run = RunConfig.model_validate({"model": {"width": 16}, "init_from": checkpoint, "data": {"path": tiny_dataset}})
    with pytest.raises(UserError, match=r"base: init_from .*shapes differ: features.0.weight \(8, 1, 3, 3\) -> \(16, 1, 3, 3\)"):
        check_init_from(run, tiny_dataset, "base: ")
    other = RunConfig.model_validate({"model": {"backbone": "resnet18"}, "init_from": checkpoint, "data": {"path": tiny_dataset}})
    with pytest.raises(UserError, match=r"missing conv1.weight, .*unexpected features.0.weight"):
        check_init_from(other, tiny_dataset)
