"""The GPU path: bf16 autocast training steps and the kNN monitor on CUDA. Skipped without a GPU."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import synthetic_images
from raysl.config import RunConfig
from raysl.views.batch import make_views
from raysl.training.evaluation import EvalSet
from raysl.training.loop import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_bf16_steps_and_knn_on_cuda():
    run = RunConfig.model_validate({"model": {"backbone": "resnet18"}, "batch_size": 64, "epochs": 1})
    trainer = Trainer(run, 3, [0.5] * 3, [0.25] * 3, steps_per_epoch=2, device="cuda")
    assert trainer.autocast_dtype == torch.bfloat16
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (128, 32, 32, 3), dtype=torch.uint8, generator=generator)
    views = {**run.views.model_dump(), "crops": [{"count": 2, "size": 32}]}
    batches = [make_views(images[i * 64 : (i + 1) * 64], type(run.views).model_validate(views), generator) for i in range(2)]
    metrics = trainer.train_epoch(batches)
    assert math.isfinite(metrics["loss"])
    # conftest's synthetic classes (a bright square whose position is the class), padded to 32 px in 3 channels:
    # the kNN must be above chance (0.1), as it is on the CPU (0.56 with this model and these steps)
    bank, bank_labels = _synthetic_rgb(128, seed=0)
    query, query_labels = _synthetic_rgb(32, seed=1)
    result = trainer.evaluate([EvalSet("synthetic", bank, query, {"label": (bank_labels, query_labels, 10)})])
    assert result["knn_top1"] > 0.3


def _synthetic_rgb(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = synthetic_images(count, seed)
    images = np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2)))[..., None], 3, axis=3)
    return torch.from_numpy(images), torch.from_numpy(labels).long()


def test_views_on_the_gpu_match_the_cpu_views():
    # views.where: trainer makes the views on the Train worker's device with the same code: the same
    # generator state must give the same views (up to float rounding) and so the same distribution.
    from raysl.config import ViewsConfig

    views = ViewsConfig.model_validate({"crops": [{"count": 2, "size": 32}], "blur": {"prob": 0.5}})
    images = torch.randint(0, 256, (512, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    on_cpu = make_views(images, views, torch.Generator().manual_seed(7))
    on_gpu = make_views(images.cuda(), views, torch.Generator().manual_seed(7))
    for cpu_view, gpu_view in zip(on_cpu, on_gpu):
        assert gpu_view.device.type == "cuda" and gpu_view.dtype == torch.uint8
        difference = (cpu_view.int() - gpu_view.cpu().int()).abs()
        assert difference.float().mean() < 0.5 and (difference > 2).float().mean() < 0.01
        assert abs(cpu_view.float().mean() - gpu_view.float().mean()) < 0.5
        assert abs(cpu_view.float().std() - gpu_view.float().std()) < 0.5
