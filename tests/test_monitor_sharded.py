"""The kNN monitor that holds features, not pixels: evaluation images read on demand and shared across ranks
(2 gloo processes, no Ray, against one process and against the in-memory figure), the class-balanced
bank_limit, the pixel cache, and evaluation.every."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import spawn_and_wait, synthetic_images
from raysl.config import RunConfig
from raysl.data.conditions import to_shape
from raysl.ingest.dataset import load_split, read_manifest
from raysl.data.eval_images import EvalImages, balanced_rows, load_eval_split
from raysl.training.evaluation import ArrayImages, EvalSet, load_eval_sets, monitor_metrics
from raysl.training.loop import Trainer
from raysl.training.monitor import knn_top1

SMALL = {"model": {"width": 8, "projector_hidden": 32, "projector_out": 16}, "batch_size": 16, "epochs": 1}


def _run(uri: str, **evaluation) -> RunConfig:
    return RunConfig.model_validate({
        **SMALL, "data": {"path": uri}, "views": {"crops": [{"count": 2, "size": 32}]},
        "evaluation": {"knn_k": 20, "batch_size": 64, **evaluation},
    })


def test_balanced_rows_take_the_same_count_of_every_class_in_stored_order():
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 1, 0, 2, -1, 1])
    rows = balanced_rows(labels, 6)
    assert rows.tolist() == [0, 1, 4, 5, 6, 7]  # two of each class, the first in stored order, sorted
    assert balanced_rows(labels, 7).tolist() == [0, 1, 2, 4, 5, 6, 7]  # the first class gets the extra one
    assert sorted(labels[balanced_rows(labels, 100)].tolist()).count(-1) == 1  # no limit: every row
    assert (labels[balanced_rows(labels, 11)] >= 0).all()  # a limit never picks unlabelled rows
    sparse = np.array([0] * 10 + [1])
    assert balanced_rows(sparse, 6).tolist() == [0, 1, 2, 10]  # class 1 has one row: it gives all it has


def test_bank_limit_is_class_balanced_in_the_eval_set(tiny_dataset):
    (eval_set,) = load_eval_sets(_run(tiny_dataset, bank_limit=100), tiny_dataset)
    bank_labels = eval_set.labels["label"][0]
    assert len(eval_set.bank_images) == 100 and torch.bincount(bank_labels).tolist() == [10] * 10
    images, labels = load_split(tiny_dataset, "train")  # each chosen image keeps its own label
    rows = eval_set.bank_images.rows
    assert np.array_equal(labels[rows], bank_labels.numpy())
    assert np.array_equal(to_shape(images[rows], eval_set.bank_images.shape), eval_set.bank_images.array())


def test_streamed_images_equal_the_whole_split_loaded_as_before(tiny_dataset, encoded_dataset):
    """EvalImages gives the pixels the monitor used to hold, in the same order, whatever the ranks."""
    pixels, _ = load_split(tiny_dataset, "test")
    images = EvalImages(tiny_dataset, read_manifest(tiny_dataset), "test", (32, 32, 1), np.arange(len(pixels)))
    expected = to_shape(pixels, (32, 32, 1))
    assert np.array_equal(images.array(), expected)
    shares = [np.concatenate(list(images.batches(rank, 3, batch_size=37))) for rank in range(3)]
    assert np.array_equal(np.concatenate(shares), expected)
    manifest = read_manifest(encoded_dataset)
    encoded = EvalImages(encoded_dataset, manifest, "train", (32, 32, 3), np.arange(400), crop_fraction=0.875)
    reference, _ = load_eval_split(encoded_dataset, manifest, "train", (32, 32, 3), limit=None, label_columns=["label"])
    assert np.array_equal(encoded.array(), reference)
    rows = np.array([3, 5, 100, 399])
    picked = EvalImages(encoded_dataset, manifest, "train", (32, 32, 3), rows)
    assert np.array_equal(picked.array(), reference[rows])


def test_a_share_that_fits_is_decoded_once_and_one_that_does_not_is_streamed(encoded_dataset):
    manifest = read_manifest(encoded_dataset)
    cached = EvalImages(encoded_dataset, manifest, "test", (32, 32, 3), np.arange(100), cache_bytes=100 * 32 * 32 * 3)
    first = cached.array()
    assert (0, 1) in cached._cache and np.array_equal(cached.array(), first)
    streamed = EvalImages(encoded_dataset, manifest, "test", (32, 32, 3), np.arange(100), cache_bytes=100 * 32 * 32 * 3 - 1)
    assert np.array_equal(streamed.array(), first) and not streamed._cache


def _in_memory_figure(run, sets, trainer) -> float:
    """Today's protocol as it was: every image in memory, float32 features, one knn_top1 call."""
    eval_set = sets[0]
    options = trainer.feature_options()
    bank = options.extract(trainer.method.backbone, torch.from_numpy(eval_set.bank_images.array()))
    queries = options.extract(trainer.method.backbone, torch.from_numpy(eval_set.query_images.array()))
    bank_labels, query_labels, classes = eval_set.labels["label"]
    return knn_top1(queries, query_labels, bank, bank_labels, classes, run.evaluation.knn_k, run.evaluation.knn_temperature)


def _trainer(run: RunConfig, manifest: dict) -> Trainer:
    return Trainer(run, 3, manifest["mean"], manifest["std"], steps_per_epoch=1)


def _sharded_worker(rank: int, init_file: str, uri: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    run = _run(uri, label_sets=["label"], budgets=[5, "all"], probe={"epochs": 3})
    trainer = _trainer(run, read_manifest(uri))
    if rank == 1:  # as under DDP after an epoch: each rank's batch-norm statistics drifted with its own batches
        for module in trainer.method.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean += 0.5
                module.running_var *= 3.0
    sets = load_eval_sets(run, uri)
    metrics = trainer.evaluate(sets)
    rows = trainer.full_evaluation(sets)
    results[rank] = {"knn_top1": metrics["knn_top1"], "rows": rows}
    dist.destroy_process_group()


def test_two_ranks_give_the_one_rank_figure_and_the_in_memory_one(encoded_dataset, tmp_path):
    run = _run(encoded_dataset, label_sets=["label"], budgets=[5, "all"], probe={"epochs": 3})
    manifest = read_manifest(encoded_dataset)
    trainer = _trainer(run, manifest)
    sets = load_eval_sets(run, encoded_dataset)
    one_rank = trainer.evaluate(sets)["knn_top1"]
    rows = trainer.full_evaluation(sets)
    in_memory = _in_memory_figure(run, sets, trainer)
    assert one_rank == pytest.approx(in_memory, abs=1e-6)  # float16 features, streamed: the same figure
    with mp.Manager() as manager:
        results = manager.dict()
        spawn_and_wait(_sharded_worker, (str(tmp_path / "init"), encoded_dataset, results), nprocs=2, timeout=300)
        results = dict(results)
    assert results[0]["knn_top1"] == results[1]["knn_top1"] == pytest.approx(one_rank, abs=1e-6)
    assert results[1]["rows"] == []  # rank 0 scores the full evaluation
    for sharded, single in zip(results[0]["rows"], rows):
        assert sharded["bank_size"] == single["bank_size"] and sharded["knn_top1"] == pytest.approx(single["knn_top1"], abs=1e-6)
        assert sharded["probe_top1"] == pytest.approx(single["probe_top1"], abs=0.02)


def test_float32_features_keep_the_figure_exactly(tiny_dataset):
    run = _run(tiny_dataset, feature_dtype="float32", query_limit=200)
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    sets = load_eval_sets(run, tiny_dataset)
    assert trainer.evaluate(sets)["knn_top1"] == _in_memory_figure(run, sets, trainer)


def test_in_memory_eval_sets_still_work():
    # conftest's synthetic classes (a bright square whose position is the class): an untrained backbone's features
    # already tell them apart, so the figure is far above chance (0.1) when images, labels and the bank line up,
    # and near it when they do not (the bank's labels shuffled)
    bank, bank_labels = (torch.from_numpy(array) for array in synthetic_images(200, seed=0))
    query, query_labels = (torch.from_numpy(array) for array in synthetic_images(50, seed=1))
    bank_labels, query_labels = bank_labels.long(), query_labels.long()
    eval_set = EvalSet("synthetic", bank[..., None], query[..., None], {"label": (bank_labels, query_labels, 10)})
    assert isinstance(eval_set.bank_images, ArrayImages)
    run = RunConfig.model_validate({**SMALL, "evaluation": {"knn_k": 5}})
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    metrics, queries = monitor_metrics(trainer.method.backbone, [eval_set], run.evaluation, trainer.feature_options())
    assert metrics["knn_top1"] > 0.6 and queries.shape == (50, 32) and queries.dtype == torch.float16
    shuffled = bank_labels[torch.randperm(200, generator=torch.Generator().manual_seed(0))]
    wrong = EvalSet("synthetic", bank[..., None], query[..., None], {"label": (shuffled, query_labels, 10)})
    assert monitor_metrics(trainer.method.backbone, [wrong], run.evaluation, trainer.feature_options())[0]["knn_top1"] < 0.4


def test_the_monitor_runs_every_n_epochs_and_the_last(tiny_dataset, tmp_path):
    run = _run(tiny_dataset, every=2, query_limit=100, bank_limit=200).model_copy(update={"epochs": 5})
    run = RunConfig.model_validate(run.model_dump())
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    sets = load_eval_sets(run, tiny_dataset)
    seen = []
    for epoch in range(1, 6):
        trainer.epoch = epoch
        metrics = trainer.monitor(sets)
        seen.append((metrics["knn_epoch"], metrics["eval_seconds"] > 0, metrics["knn_top1"]))
        if epoch == 3:
            trainer.save(tmp_path)
    assert [entry[:2] for entry in seen] == [(0, False), (2, True), (2, False), (4, True), (5, True)]
    assert math.isnan(seen[0][2]) and seen[2][2] == seen[1][2]  # nothing measured yet; then carried forward
    resumed = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    resumed.load(tmp_path)  # a restart between measurements carries the last measured figure, not NaN
    assert resumed.epoch == 3 and resumed.monitored["knn_epoch"] == 2 and resumed.monitored["knn_top1"] == seen[1][2]


def test_validation_notes_asha_rungs_that_fall_between_measurements(tmp_path):
    from raysl.config import load_sweep_config

    path = tmp_path / "sweep.yaml"
    path.write_text("base: {epochs: 20, evaluation: {every: 3}}\nscheduler: {name: asha, grace_period: 2, reduction_factor: 2}\n")
    (note,) = load_sweep_config(path)._notes
    assert "ASHA decides at epochs 2, 4, 8, 16" in note and "at 2, 4, 8, 16" in note and "multiple of 3" in note
    path.write_text("base: {epochs: 20, evaluation: {every: 2}}\nscheduler: {name: asha, grace_period: 2, reduction_factor: 2}\n")
    assert load_sweep_config(path)._notes == []


def _tiny_share_worker(rank: int, init_file: str, uri: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    run = _run(uri, query_limit=1, bank_limit=50)
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    results[rank] = trainer.evaluate(load_eval_sets(run, uri))["knn_top1"]
    dist.destroy_process_group()


def test_a_rank_without_queries_still_takes_part(tiny_dataset, tmp_path):
    """One query, two ranks: rank 0's share is empty; both ranks must still reach the same collectives."""
    run = _run(tiny_dataset, query_limit=1, bank_limit=50)
    one_rank = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1).evaluate(load_eval_sets(run, tiny_dataset))["knn_top1"]
    with mp.Manager() as manager:
        results = manager.dict()
        spawn_and_wait(_tiny_share_worker, (str(tmp_path / "init"), tiny_dataset, results), nprocs=2, timeout=300)
        assert results[0] == results[1] == one_rank


def test_a_label_set_with_unlabelled_bank_rows_leaves_the_next_label_set_its_whole_bank():
    """The first label set drops its unlabelled (-1) bank rows; the second, fully labelled, is still scored
    against every bank row: the figure it gets when evaluated alone, and no IndexError. The queries are the
    bank images and k = 1, so the second set alone is right on every query (each finds itself)."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (10, 28, 28, 1), dtype=torch.uint8)
    partial = torch.tensor([0, 1, -1, 0, 1, -1, 0, 1, 0, 1])
    full = torch.arange(10)  # one class per image
    run = RunConfig.model_validate({**SMALL, "evaluation": {"knn_k": 1}})
    trainer = Trainer(run, 1, [0.5], [0.25], steps_per_epoch=1)
    both = EvalSet("random", images, images, {"partial": (partial, partial, 2), "full": (full, full, 10)})
    alone = EvalSet("random", images, images, {"full": (full, full, 10)})
    options = trainer.feature_options()
    together, _ = monitor_metrics(trainer.method.backbone, [both], run.evaluation, options)
    by_itself, _ = monitor_metrics(trainer.method.backbone, [alone], run.evaluation, options)
    assert by_itself["knn_top1"] == 1.0
    assert together["knn_top1/random:full"] == by_itself["knn_top1"]
