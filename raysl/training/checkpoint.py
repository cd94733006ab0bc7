"""Reading back what training and `raysl export` wrote: where a path's checkpoint is, its state, the run config it
was trained with, its input statistics, the backbone it holds (or an export directory's), and those weights loaded
into a new run's method (init_from). Pure torch: no Ray.

`raysl eval`, `raysl export`, `raysl embed`, the Python API and the Trainer (init_from) all read checkpoints
through these functions; raysl.outputs.export writes exports (the files named here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from raysl.config import RunConfig, legacy_stem, validated_run
from raysl.errors import UserError

STATE_FILE = "backbone.pt"  # an export's backbone weights
MODEL_FILE = "model.json"  # an export's description: backbone, input, figures, run config


def find_checkpoint(uri: str) -> str:
    """The checkpoint directory CHECKPOINT names: a directory holding state.pt, state.pt itself, or a run
    directory holding checkpoint_* directories (the newest is taken)."""
    from raysl.io.storage import exists, list_dirs

    uri = uri.rstrip("/")
    if uri.endswith("/state.pt") and exists(uri):
        return uri.rsplit("/", 1)[0]
    if exists(f"{uri}/state.pt"):
        return uri
    checkpoints = [name for name in list_dirs(uri) if name.startswith("checkpoint_")]
    for name in sorted(checkpoints, reverse=True):
        if exists(f"{uri}/{name}/state.pt"):
            return f"{uri}/{name}"
    raise UserError(f"{uri}: no checkpoint there (expected state.pt, or checkpoint_* directories holding one)")


def load_checkpoint(directory: str) -> dict[str, Any]:
    """A checkpoint's state (weights_only: tensors and plain containers, never code) from a local path or URI."""
    import io

    from raysl.io.storage import read_bytes

    data = read_bytes(f"{directory}/state.pt")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, refused global
        raise UserError(f"{directory}/state.pt cannot be loaded: {type(error).__name__}: {str(error).splitlines()[0]}") from None


def recorded_run_config(config: Any, where: str, *, edit: Callable[[dict[str, Any]], None] | None = None,
                        invalid: str | None = None) -> RunConfig:
    """The RunConfig of a recorded run config (a checkpoint's, an export's model.json's): a copy brought up to date
    (legacy_stem), changed by `edit` (eval's --set), validated. A UserError names `where` when there is none, or
    heads (`invalid`) the invalid fields."""
    if not isinstance(config, dict):
        raise UserError(f"{where}: no run config recorded")
    data = legacy_stem(json.loads(json.dumps(config)))  # a copy: the recorded one stays as it was saved
    if edit is not None:
        edit(data)
    return validated_run(data, invalid or f"{where}: its recorded run config is not valid for this raysl")


def run_config_of_checkpoint(state: dict[str, Any], where: str, *, edit: Callable[[dict[str, Any]], None] | None = None,
                             invalid: str | None = None) -> RunConfig:
    """The RunConfig a checkpoint's loaded `state` was trained with (`where`: its state.pt, for errors; `edit`,
    `invalid`: recorded_run_config's); a UserError when it is not a raysl checkpoint."""
    if not isinstance(state.get("config"), dict) or "method" not in state:
        raise UserError(f"{where} is not a raysl checkpoint (no config or method weights)")
    return recorded_run_config(state["config"], where, edit=edit, invalid=invalid)


def checkpoint_input(state: dict[str, Any], run: RunConfig, where: str) -> dict[str, Any]:
    """channels / mean / std: from the checkpoint (written since export existed), else the dataset's manifest."""
    recorded = state.get("input")
    if isinstance(recorded, dict) and {"channels", "mean", "std"} <= set(recorded):
        return {"channels": int(recorded["channels"]), "mean": list(recorded["mean"]), "std": list(recorded["std"])}
    from raysl.ingest.dataset import channels_of, read_manifest
    from raysl.ingest.resolve import resolve_data

    try:
        manifest = read_manifest(resolve_data(run))
    except UserError as error:
        raise UserError(f"{where} predates recorded input statistics and its dataset cannot be read ({error})") from None
    return {"channels": channels_of(manifest), "mean": manifest["mean"], "std": manifest["std"]}


def load_backbone(path: str) -> nn.Module:
    """The backbone of an export directory (model.json + backbone.pt) or of a checkpoint (directory, state.pt
    or run directory), in eval mode, on CPU. Its `out_dim` is the feature width; inputs as model.json says."""
    from raysl.config import ModelConfig
    from raysl.methods.backbones import build_backbone

    directory = Path(os.path.expanduser(path))
    if (directory / MODEL_FILE).exists():
        document = json.loads((directory / MODEL_FILE).read_text())
        extra = document.get("small_cnn") or {}
        config = ModelConfig(backbone=document["backbone"], stem=document.get("stem") or "auto", **extra)
        backbone = build_backbone(config, document["input"]["channels"], document["input"]["size"])
        weights = torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        backbone.load_state_dict(weights)
        return backbone.eval()
    checkpoint = find_checkpoint(str(path))
    return backbone_of_state(load_checkpoint(checkpoint), f"{checkpoint}/state.pt")


def backbone_of_state(state: dict, where: str) -> nn.Module:
    """The backbone of a checkpoint's loaded state (`where`: its state.pt, for errors), in eval mode, on CPU."""
    from raysl.methods import build_method

    run = run_config_of_checkpoint(state, where)
    method = build_method(run, checkpoint_input(state, run, where)["channels"])
    method.load_state_dict(state["method"])
    return method.backbone.eval()


def fitting_weights(backbone: nn.Module, path: str) -> dict[str, torch.Tensor]:
    """The backbone weights of `path` (an export or a checkpoint) when they fit `backbone` key for key and shape for
    shape (`backbone` may be on the meta device: only its names and shapes are read); otherwise a UserError naming
    the missing, unexpected and differently shaped keys."""
    source = load_backbone(path).state_dict()
    target = backbone.state_dict()
    missing = [key for key in target if key not in source]
    unexpected = [key for key in source if key not in target]
    shapes = [f"{key} {tuple(source[key].shape)} -> {tuple(target[key].shape)}" for key in target
              if key in source and source[key].shape != target[key].shape]
    if missing or unexpected or shapes:
        def listed(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "") if keys else "none"

        raise UserError(f"init_from {path}: its backbone does not fit model.backbone {backbone.__class__.__name__}: "
                        f"missing {listed(missing)}; unexpected {listed(unexpected)}; shapes differ: {listed(shapes)} "
                        f"(the same backbone, stem and channels are needed)")
    return source


def initialise_from(method: nn.Module, path: str) -> None:
    """Load the backbone weights of `path` (an export or a checkpoint) into `method`'s backbone, strictly
    (fitting_weights). Momentum encoders (MoCo's key encoder, BYOL's target) are reset to copies of the online
    network."""
    method.backbone.load_state_dict(fitting_weights(method.backbone, path))
    for owner in method.modules():
        for name in ("key_encoder", "target"):
            encoder = getattr(owner, name, None)
            if isinstance(encoder, nn.Module) and hasattr(owner, "projector"):
                encoder.load_state_dict(nn.Sequential(owner.backbone, owner.projector).state_dict())
