"""The Ray Data view pipeline as a run consumes it: one execution streams every epoch, each epoch a full
pass over the (limited) train split. Checked with identity views (full-image crops, nothing random), so
each delivered view is one train image and can be told apart by its bytes. Real local Ray, no Train."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import ray

from conftest import connected
from raysl.config import RunConfig
from raysl.ingest.dataset import load_split
from raysl.data.pretraining import plan_pretraining
from raysl.ray_glue.pipeline import build_view_dataset, configure_data_context, epochs_per_execution

IDENTITY_VIEWS = {
    "crops": [{"count": 2, "size": 28, "scale": [1.0, 1.0], "ratio": [1.0, 1.0]}],
    "flip": 0.0, "color_jitter": {"prob": 0.0}, "grayscale": 0.0, "blur": {"prob": 0.0},
}


@pytest.fixture(scope="module")
def local_ray(shared_ray_address):
    with connected(shared_ray_address):  # the session's Ray (conftest), disconnected after this module
        yield


def _run(tiny_dataset: str, **data) -> RunConfig:
    return RunConfig.model_validate({
        "data": {"path": tiny_dataset, **data}, "views": IDENTITY_VIEWS, "epochs": 3, "batch_size": 100,
        "resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.5},
    })


def _delivered(run: RunConfig, tiny_dataset: str) -> tuple[list[bytes], int]:
    configure_data_context(run)
    plan = plan_pretraining(run, tiny_dataset)
    dataset = build_view_dataset(run, plan, epochs_per_execution(run, plan))
    rows = [image.tobytes() for batch in dataset.iter_batches(batch_size=250, batch_format="numpy")
            for image in batch["view_0"].transpose(0, 2, 3, 1)]  # views are (N, C, S, S); images (N, H, W, C)
    return rows, plan.epoch_images


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 500])
def test_one_execution_streams_every_epoch_each_image_once_per_epoch(local_ray, tiny_dataset, limit):
    run = _run(tiny_dataset, train_limit=limit)
    rows, epoch_images = _delivered(run, tiny_dataset)
    images, _ = load_split(tiny_dataset, "train")
    expected = images[: limit or len(images)]
    assert epoch_images == len(expected)
    assert len(rows) == run.epochs * len(expected)  # all epochs in one iteration: nothing lost or repeated
    assert Counter(rows) == Counter({image.tobytes(): run.epochs for image in expected})


@pytest.mark.slow
def test_the_rows_of_a_batch_change_from_epoch_to_epoch(local_ray, tiny_dataset):
    # A batch's rows are each other's negatives: they must not be the same rows every epoch. With no local
    # shuffle buffer for small batches, that rests on the augmentation actor's fresh row order per block.
    import itertools

    import torch

    from raysl.ray_glue.pipeline import view_batches, shuffle_buffer

    run = _run(tiny_dataset)
    assert shuffle_buffer(run.batch_size) is None  # the case without a buffer
    configure_data_context(run)
    plan = plan_pretraining(run, tiny_dataset)
    dataset = build_view_dataset(run, plan, epochs_per_execution(run, plan))
    batches = view_batches(dataset, run.batch_size, run.views, torch.device("cpu"), plan)
    steps = plan.epoch_images // run.batch_size

    def together() -> set[tuple[bytes, bytes]]:  # the pairs of images that shared a batch this epoch
        pairs = set()
        for views in itertools.islice(batches, steps):
            rows = sorted(image.tobytes() for image in views[0].numpy())
            pairs.update(itertools.combinations(rows, 2))
        return pairs

    first, second = together(), together()
    # A random 100 of a 1024-row block share a batch again with chance ~0.1; the same batches give 1.0.
    assert len(first & second) / len(first) < 0.4


@pytest.mark.slow
def test_a_plan_that_mixes_keeps_one_execution_per_epoch(local_ray, tiny_dataset):
    # A 300-image subset repeated to the full split: a global shuffle per epoch, so one epoch per execution.
    run = _run(tiny_dataset, subset={"count": 300, "epoch_size": "full"})
    rows, epoch_images = _delivered(run, tiny_dataset)
    assert len(rows) == epoch_images == 2000
    counts = np.array(sorted(Counter(rows).values()))
    assert len(counts) == 300 and counts.min() >= 6 and counts.max() <= 7  # 2000 / 300, largest remainder


@pytest.mark.slow
def test_views_made_by_the_trainer_come_from_decoded_images(local_ray, tiny_dataset):
    # views.where: trainer: Ray Data delivers the images (each once per epoch) and the Train worker's batch
    # generator makes the views itself; identity views must give back the images.
    import torch

    from raysl.ray_glue.pipeline import view_batches

    run = _run(tiny_dataset, train_limit=600).model_copy(deep=True)
    run = RunConfig.model_validate({**run.model_dump(mode="json"), "views": {**IDENTITY_VIEWS, "where": "trainer"}, "epochs": 1})
    configure_data_context(run)
    plan = plan_pretraining(run, tiny_dataset)
    dataset = build_view_dataset(run, plan, epochs_per_execution(run, plan))
    batches = list(view_batches(dataset, 100, run.views, torch.device("cpu"), plan))
    assert len(batches) == 6 and all(len(views) == 2 for views in batches)
    assert all(view.dtype == torch.uint8 and view.shape == (100, 1, 28, 28) for views in batches for view in views)
    delivered = Counter(image.tobytes() for views in batches for image in views[0].permute(0, 2, 3, 1).numpy())
    images, _ = load_split(tiny_dataset, "train", limit=600)
    assert delivered == Counter(image.tobytes() for image in images)


class _FakeOp:
    def __init__(self, active: list):
        self.active = active

    def get_active_tasks(self) -> list:
        return self.active


def test_an_idle_scheduling_step_sleeps_instead_of_spinning(monkeypatch):
    # Ray Data's executor loop waits only while a task is active; raysl's patch makes an idle step sleep
    # 10 ms (two SplitCoordinators used 387 s of CPU in a 2-trial sweep without it) and leaves busy ones alone.
    import time
    import types

    from ray.data._internal.execution import streaming_executor

    from raysl.ray_glue import data_patches

    events = []
    monkeypatch.setattr(streaming_executor, "process_completed_tasks",
                        lambda topology, *args, **kwargs: events.append(("process", topology)) or 0)
    real_sleep = time.sleep

    def sleep(seconds):  # recorded, and really slept: the idle step waits at least that long
        events.append(("sleep", seconds))
        real_sleep(seconds)

    monkeypatch.setattr(data_patches, "time", types.SimpleNamespace(sleep=sleep))
    assert data_patches.install()
    wrapped = streaming_executor.process_completed_tasks
    assert data_patches.install() and streaming_executor.process_completed_tasks is wrapped  # idempotent
    idle, busy = {_FakeOp([]): None}, {_FakeOp([object()]): None}
    started = time.perf_counter()
    wrapped(idle)
    assert time.perf_counter() - started >= data_patches.IDLE_SLEEP_S
    wrapped(busy)
    # the idle step sleeps once, before Ray's own step; the busy one goes straight to it
    assert events == [("sleep", data_patches.IDLE_SLEEP_S), ("process", idle), ("process", busy)]


def test_only_several_workers_split_the_view_dataset():
    # One Train worker iterates the whole view dataset itself (no SplitCoordinator process, no per-block
    # round trips); several share it through streaming_split, each getting its own blocks.
    from raysl.ray_glue.pipeline import datasets_to_split

    assert datasets_to_split(1) == []
    assert datasets_to_split(2) == datasets_to_split(4) == "all"
