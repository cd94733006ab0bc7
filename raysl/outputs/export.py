"""Take the backbone away: `raysl export` writes a checkpoint's backbone alone, in its library's own form
(torchvision's state_dict names, or raysl's small CNN), with model.json saying what it expects and what it
scored; `load_backbone` builds it back. Pure torch: no Ray.

An export directory holds:
- `backbone.pt`: the backbone's state_dict (torch.save; tensors only, loads with weights_only=True). For a
  torchvision model the keys are torchvision's own less the classifier's: with the ImageNet stem it loads into
  `torchvision.models.get_model(name, weights=None)` with `strict=False` (missing: the classifier); with the
  CIFAR stem, into the same model after conv1 -> 3x3 stride 1 and maxpool -> Identity (load_backbone does it).
- `model.json`: backbone, stem, input size and channels, normalisation mean / std, feature width, the kNN
  figure with its protocol, epoch, git commit, the full run config.
- `backbone.torchscript.pt` with `--format torchscript`: a traced module taking normalised float images
  (N, C, H, W), checked against the original on a batch (the max abs difference goes into model.json).
- `backbone.onnx` with `--format onnx` (needs `pip install 'raysl[onnx]'`): the same inputs, batch size dynamic,
  weights inside the one file; run in onnxruntime on a batch of another size than it was exported with and
  checked against the original (the max abs difference goes into model.json).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from raysl.errors import UserError
from raysl.report.leaderboard import best_trial_run
from raysl.training.checkpoint import MODEL_FILE, STATE_FILE

TORCHSCRIPT_FILE = "backbone.torchscript.pt"
ONNX_FILE = "backbone.onnx"
FORMATS = ("state_dict", "torchscript", "onnx")


def _onnxruntime():
    """onnxruntime, once torch.onnx's exporter's packages import too (onnxscript, which needs onnx): called before
    anything is loaded or written. Optional packages, so imported here, not at the top."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise UserError(f"--format onnx needs onnx, onnxscript and onnxruntime ({error}): pip install 'raysl[onnx]'") from None
    return onnxruntime


def export_backbone(checkpoint: str, out: str, formats: tuple[str, ...] = ("state_dict",), log=print) -> dict[str, Any]:
    """Write `checkpoint`'s backbone (a checkpoint directory, its state.pt, a run directory: its newest
    checkpoint, or a sweep's experiment directory: its best trial's) to the directory `out` in `formats`;
    returns model.json's content."""
    from raysl.methods import backbone_image_size, build_method
    from raysl.training.checkpoint import checkpoint_input, find_checkpoint, load_checkpoint, run_config_of_checkpoint

    unknown = [name for name in formats if name not in FORMATS]
    if unknown:
        raise UserError(f"--format {unknown[0]}: choose from {', '.join(FORMATS)}")
    onnxruntime = _onnxruntime() if "onnx" in formats else None
    directory = find_checkpoint(best_trial_run(checkpoint, log))
    state = load_checkpoint(directory)
    run = run_config_of_checkpoint(state, f"{directory}/state.pt")
    inputs = checkpoint_input(state, run, f"{directory}/state.pt")
    method = build_method(run, inputs["channels"])
    try:
        method.load_state_dict(state["method"])
    except RuntimeError as error:
        raise UserError(f"{directory}/state.pt does not fit its own config's model: {str(error).splitlines()[0]}") from None
    backbone = method.backbone.eval()
    size = backbone_image_size(run)
    monitored = state.get("monitored") or {}
    document = {
        "format_version": 1,
        "backbone": run.model.backbone,
        "library": "raysl" if run.model.backbone == "small_cnn" else "torchvision",
        "stem": run.model.resolved_stem(size) if run.model.backbone != "small_cnn" else None,
        "small_cnn": {"width": run.model.width, "pool_size": run.model.pool_size} if run.model.backbone == "small_cnn" else None,
        "input": {"size": size, **inputs, "layout": "NCHW float, (x / 255 - mean) / std"},
        "feature_dim": int(backbone.out_dim),
        "knn_top1": monitored.get("knn_top1"),
        "knn_epoch": int(monitored["knn_epoch"]) if monitored.get("knn_epoch") is not None else None,
        "knn_protocol": {"k": run.evaluation.knn_k, "temperature": run.evaluation.knn_temperature,
                         "bank": "train split" if run.evaluation.bank_limit is None else f"class-balanced {run.evaluation.bank_limit}",
                         "queries": "test split" if run.evaluation.query_limit is None else f"first {run.evaluation.query_limit}",
                         "features": "backbone output, L2-normalised, eval mode"},
        "epoch": int(state.get("epoch", 0)),
        "git_commit": state.get("git_commit"),
        "checkpoint": directory,
        "config": state["config"],
        "files": {},
    }
    target = Path(os.path.expanduser(out))
    target.mkdir(parents=True, exist_ok=True)
    if "state_dict" in formats:
        torch.save({key: value.detach().clone() for key, value in backbone.state_dict().items()}, target / STATE_FILE)
        document["files"]["state_dict"] = STATE_FILE
    example = torch.randn(4, inputs["channels"], size, size, generator=torch.Generator().manual_seed(0))
    if "torchscript" in formats:
        with torch.no_grad():
            traced = torch.jit.trace(backbone, example, check_trace=False)
            traced.save(str(target / TORCHSCRIPT_FILE))
            reloaded = torch.jit.load(str(target / TORCHSCRIPT_FILE))
            difference = (reloaded(example) - backbone(example)).abs().max().item()
        document["files"]["torchscript"] = TORCHSCRIPT_FILE
        document["torchscript_max_abs_difference"] = difference
        log(f"torchscript: max abs difference {difference:.3g} against the original on a batch of 4")
    if "onnx" in formats:
        # torch.export's exporter (the default; the TorchScript-based one is deprecated), the batch dimension
        # symbolic; weights inside the file (not backbone.onnx.data beside it): one file, up to protobuf's 2 GB
        try:
            torch.onnx.export(backbone, (example,), str(target / ONNX_FILE), dynamo=True, input_names=["images"],
                              output_names=["features"], dynamic_shapes=({0: torch.export.Dim("batch")},),
                              external_data=False, verbose=False)
            session = onnxruntime.InferenceSession(str(target / ONNX_FILE), providers=["CPUExecutionProvider"])
        except Exception as error:  # an operator the exporter lacks, a model past protobuf's 2 GB, ...
            (target / ONNX_FILE).unlink(missing_ok=True)
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise UserError(f"--format onnx: {run.model.backbone} did not export to ONNX ({type(error).__name__}: "
                            f"{message}); the state_dict and TorchScript exports do not need it") from None
        batch = torch.randn(3, inputs["channels"], size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            features = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
            difference = (features - backbone(batch)).abs().max().item()
        document["files"]["onnx"] = ONNX_FILE
        document["onnx_max_abs_difference"] = difference
        log(f"onnx: max abs difference {difference:.3g} against the original in onnxruntime on a batch of 3 "
            f"(exported with 4: the batch size is dynamic)")
    (target / MODEL_FILE).write_text(json.dumps(document, indent=2) + "\n")
    log(f"exported {run.model.backbone} ({document['feature_dim']}-d features, epoch {document['epoch']}) from "
        f"{directory} -> {target}")
    return document
