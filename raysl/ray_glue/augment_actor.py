"""The augmentation step of the Ray Data pipeline, as a plain callable: rows in, views out.

Kept apart from raysl.ray_glue on purpose: Ray Data starts a fresh actor for every epoch's execution, and
each one imports this module. Importing raysl.ray_glue.worker (Ray Train, the training loop, evaluation)
cost 4.4 s of CPU on the dev machine; this module and what it needs (torch, the view maker, the plan)
1.9 s. On 2 cores that difference was most of an epoch's augmentation work for 60k small images.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from raysl.config import ViewsConfig
from raysl.data.pretraining import PretrainingPlan, decode_images
from raysl.ray_glue import data_patches
from raysl.views.batch import make_views
from raysl.views.encoded import views_of_rows

data_patches.install()  # this module is imported wherever the view dataset's plan is unpickled: see data_patches

AUGMENT_BATCH = 1024  # rows per augmentation call and output block: fewer, larger blocks to move
BLOCK_BYTES = 64 * 2**20  # an encoded dataset's output block at most this size (224 px views are 150 KB each)
MIN_AUGMENT_BATCH = 32
FILES_BATCH = 256  # rows per block when the blocks carry encoded files to the Train worker (tens of KB each)


def augment_batch(views: ViewsConfig, plan: PretrainingPlan) -> int:
    """Rows per augmentation call: AUGMENT_BATCH for fixed-shape data (small images); for an encoded dataset as
    many as keep an output block near BLOCK_BYTES of views (at least MIN_AUGMENT_BATCH, at most AUGMENT_BATCH)."""
    if not plan.variable:
        return AUGMENT_BATCH
    if views.where == "trainer":  # the block holds the encoded files, not views
        return FILES_BATCH
    per_row = sum(spec.count * plan.channels * spec.size**2 for spec in views.crops)
    return max(MIN_AUGMENT_BATCH, min(AUGMENT_BATCH, BLOCK_BYTES // per_row))


class AugmentViews:
    """Ray Data map_batches callable: rows in, one uint8 (N, C, S, S) column per view out (or, with
    views.where: trainer, the conditioned uint8 images (N, H, W, C) as column `image`).

    Rows first go through the run's pretraining plan when it has data conditions (subset, pool, corruption:
    raysl/data/pretraining.py); then the views are made. Runs in a long-lived actor (one per trial by
    default): on 2 cores, plain tasks were measured to spend more CPU starting worker processes (importing
    torch) than augmenting, and left the Train workers about a third of a core each. A fresh, unseeded
    generator per batch: new views, and a new row order, every epoch.
    """

    def __init__(self, views: dict[str, Any], plan: PretrainingPlan):
        torch.set_num_threads(1)
        self.views = ViewsConfig.model_validate(views)
        self.plan = plan

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.plan.variable:
            return self._variable(batch)
        plan = self.plan
        if plan.selective:
            sources = plan.source_of(batch["path"]) if "path" in batch else None
            pixels = plan.apply(batch["image"], batch["index"], sources)
        else:
            pixels = decode_images(batch["image"], plan.shape)
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        # Rows leave in a fresh random order: the rows of a batch (each other's negatives) change every
        # epoch without a local shuffle buffer on the consumer (raysl.ray_glue.pipeline.shuffle_buffer).
        order = torch.randperm(len(pixels), generator=generator).numpy()
        if self.views.where == "trainer":  # the Train worker makes the views on its device
            return {"image": np.ascontiguousarray(pixels[order])}
        if len(pixels) == 0:  # a block the plan keeps nothing of (a small subset): no views, right shapes
            channels = pixels.shape[-1]
            return {f"view_{index}": np.empty((0, channels, spec.size, spec.size), np.uint8)
                    for index, spec in enumerate(spec for spec in self.views.crops for _ in range(spec.count))}
        images = torch.from_numpy(pixels[order])
        made = make_views(images, self.views, generator)
        return {f"view_{index}": view.numpy() for index, view in enumerate(made)}

    def _variable(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """An encoded dataset's rows: views cropped from each original image (raysl.views.encoded), or with
        views.where: trainer the encoded files themselves, for the Train worker to decode on its device."""
        plan = self.plan
        sources = plan.source_of(batch["path"]) if "path" in batch else None
        rows = plan.variable_rows(batch["image"], batch.get("index"), sources)
        generator = torch.Generator().manual_seed(int.from_bytes(os.urandom(8), "little") >> 1)
        rows = [rows[index] for index in torch.randperm(len(rows), generator=generator).tolist()]
        if self.views.where == "trainer":  # encoded rows only (checked before the run starts)
            column = np.empty(len(rows), dtype=object)
            column[:] = rows
            return {"image": column}
        if not rows:
            return {f"view_{index}": np.empty((0, plan.channels, spec.size, spec.size), np.uint8)
                    for index, spec in enumerate(spec for spec in self.views.crops for _ in range(spec.count))}
        made = views_of_rows(rows, self.views, generator, plan.channels)
        return {f"view_{index}": view.numpy() for index, view in enumerate(made)}
