"""raysl: self-supervised contrastive image pretraining sweeps on Ray.

The Python API (raysl.api): `raysl.sweep`, `raysl.train`, `raysl.evaluate`, `raysl.embed`, `raysl.export`, `raysl.load_backbone`.
They are imported on first use, so `import raysl` stays light (Ray workers import raysl's modules too).
"""

__version__ = "0.1.0"

_API = {"sweep", "train", "evaluate", "embed", "SweepResult", "TrainResult"}
__all__ = sorted(_API | {"export", "load_backbone"})


def __getattr__(name: str):
    if name in _API:
        from raysl import api

        return getattr(api, name)
    raise AttributeError(f"module 'raysl' has no attribute {name!r}")


def load_backbone(path: str):
    """The backbone of a `raysl export` directory or of a checkpoint, in eval mode (raysl.training.checkpoint.load_backbone)."""
    from raysl.training.checkpoint import load_backbone as load

    return load(path)


def export(checkpoint: str, out: str, formats: tuple[str, ...] = ("state_dict",)) -> dict:
    """Write a checkpoint's backbone to `out` (raysl.outputs.export.export_backbone); returns model.json's content."""
    from raysl.outputs.export import export_backbone

    return export_backbone(checkpoint, out, formats, log=lambda text: None)
