"""raysl: self-supervised contrastive image pretraining sweeps on Ray."""

__version__ = "0.1.0"


def load_backbone(path: str):
    """The backbone of a `raysl export` directory or of a checkpoint, in eval mode (raysl.exporting.load_backbone)."""
    from raysl.exporting import load_backbone as load

    return load(path)


def export(checkpoint: str, out: str, formats: tuple[str, ...] = ("state_dict",)) -> dict:
    """Write a checkpoint's backbone to `out` (raysl.exporting.export_backbone); returns model.json's content."""
    from raysl.exporting import export_backbone

    return export_backbone(checkpoint, out, formats, log=lambda text: None)
