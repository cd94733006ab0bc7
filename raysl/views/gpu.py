"""The same views made on the Train worker's GPU: JPEGs decoded by nvjpeg through torchvision.io, crops and
photometric ops on the device (`views.where: trainer`); without CUDA, decoded as the actors do.

Imports raysl.config and raysl.views.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from raysl.config import ViewsConfig

try:  # the fast JPEG decoder: a wheel that bundles libjpeg-turbo (no system library)
    import simplejpeg
except ImportError:  # PIL decodes everything then
    simplejpeg = None
from raysl.views.decode import as_bytes, decode_pil, image_size, is_jpeg, target_mode
from raysl.views.encoded import Geometry, finish, resize_crop_tensor, views_from_encoded
from raysl.views.geometry import integer_box


def _decode_on_device(blobs: list[bytes], channels: int, device: torch.device) -> list[torch.Tensor]:
    """uint8 (C, H, W) per image on `device`: JPEGs with nvjpeg in one batched call, others (and any JPEG
    nvjpeg refuses) on the CPU with torchvision's decode_image (PIL past that), then moved."""
    from torchvision.io import ImageReadMode, decode_image, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in blobs]
    out: list[torch.Tensor | None] = [None] * len(blobs)
    jpegs = [row for row, data in enumerate(blobs) if is_jpeg(data)]
    if jpegs:
        try:
            decoded = decode_jpeg([tensors[row] for row in jpegs], mode=mode, device=device)
            for row, image in zip(jpegs, decoded):
                out[row] = image
        except (RuntimeError, ValueError):  # one bad file fails the batch: one at a time, failures on the CPU
            for row in jpegs:
                try:
                    out[row] = decode_jpeg(tensors[row], mode=mode, device=device)
                except (RuntimeError, ValueError):
                    pass
    for row, image in enumerate(out):
        if image is None:
            try:
                image = decode_image(tensors[row], mode=mode)
            except (RuntimeError, ValueError):
                array = np.asarray(decode_pil(blobs[row], channels, 1)[0])
                image = torch.from_numpy(array.reshape(array.shape[0], array.shape[1], -1).copy()).permute(2, 0, 1)
            out[row] = image.to(device, non_blocking=True)
    return out


def views_on_device(
    column: Sequence[bytes] | np.ndarray, views: ViewsConfig, generator: torch.Generator, channels: int,
    device: torch.device | str, *, sizes: Sequence[tuple[int, int]] | None = None,
) -> list[torch.Tensor]:
    """views_from_encoded made on `device`: on CUDA, JPEGs decoded by nvjpeg (full size), each crop sliced and
    resized with F.interpolate(bilinear, antialias=True), flipped, photometric on the device; uint8
    (N, C, S, S) on the device per view. The same geometry draws (from the CPU generator) as the CPU path.
    On a CPU device: views_from_encoded."""
    device = torch.device(device)
    if device.type != "cuda":  # the CPU path (moved to another kind of device, if asked)
        out = views_from_encoded(column, views, generator, channels, sizes=sizes)
        return out if device.type == "cpu" else [view.to(device) for view in out]
    blobs = [as_bytes(data) for data in column]
    target_mode(channels)
    known = list(sizes) if sizes is not None else [image_size(data) for data in blobs]
    widths, heights = [int(w) for w, _ in known], [int(h) for _, h in known]
    geometry = Geometry(widths, heights, views, generator)
    images = _decode_on_device(blobs, channels, device)
    for row, image in enumerate(images):
        if tuple(image.shape[1:]) != (heights[row], widths[row]) or image.shape[0] != channels:
            raise ValueError(f"image {row} decodes to {tuple(image.shape)}, expected ({channels}, {heights[row]}, {widths[row]})")
    boxes = geometry.boxes.tolist()
    batches = []
    for index, spec in enumerate(geometry.specs):
        crops = [
            resize_crop_tensor(image[None], integer_box(boxes[row][index], 1.0, widths[row], heights[row]), spec.size)
            for row, image in enumerate(images)
        ]
        batches.append(torch.cat(crops).round_().clamp_(0, 255))  # uint8 levels, like the CPU path's crops
    return finish(batches, geometry, views, generator)
