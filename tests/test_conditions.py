"""Data conditions and evaluation, without Ray: subsets, budgets, pooling shares, shape rule, label maps,
kNN top-5, the linear probe, and the full evaluation of a model on a prepared dataset."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raysl.config import RunConfig, SubsetConfig
from raysl.data.conditions import (
    budget_indices, budget_name, pretraining_counts, repeat_counts, subset_order, to_shape,
)
from raysl.data.labelsets import load_label_map, resolve_label_set
from raysl.ingest.dataset import read_manifest
from raysl.data.pretraining import in_memory_epoch_images, plan_pretraining
from raysl.ingest.source import FASHION_MNIST_CLASSES
from raysl.errors import UserError
from raysl.training.evaluation import load_eval_sets
from raysl.training.loop import Trainer
from raysl.training.monitor import knn_scores, topk_accuracy
from raysl.training.probe import probe_accuracy, train_linear_probe

LABELS = np.repeat(np.arange(10), 600)[np.random.default_rng(5).permutation(6000)]


# ------------------------------------------------------------------------------------------ subsets


@pytest.mark.parametrize("balanced", [False, True])
def test_subsets_are_deterministic_and_nested(balanced):
    sizes = [50, 500, 1000, 5000]
    subsets = [set(subset_order(LABELS, SubsetConfig(count=n, seed=3, balanced=balanced)).tolist()) for n in sizes]
    again = set(subset_order(LABELS, SubsetConfig(count=500, seed=3, balanced=balanced)).tolist())
    assert again == subsets[1]
    assert [len(s) for s in subsets] == sizes
    for small, large in zip(subsets, subsets[1:]):
        assert small < large  # the 500 subset is inside the 1000 one
    other_seed = set(subset_order(LABELS, SubsetConfig(count=500, seed=4, balanced=balanced)).tolist())
    assert other_seed != subsets[1]


def test_fraction_is_the_same_nested_order_as_count():
    by_fraction = subset_order(LABELS, SubsetConfig(fraction=0.25, seed=1))
    by_count = subset_order(LABELS, SubsetConfig(count=1500, seed=1))
    assert np.array_equal(by_fraction, by_count)


def test_balanced_subset_has_equal_classes_and_the_first_get_the_remainder():
    chosen = subset_order(LABELS, SubsetConfig(count=1003, seed=0, balanced=True))
    counts = np.bincount(LABELS[chosen], minlength=10)
    assert counts.tolist() == [101, 101, 101] + [100] * 7


def test_subset_errors_name_the_field():
    with pytest.raises(UserError, match=r"data.subset.count 7000 exceeds the 6000 images"):
        subset_order(LABELS, SubsetConfig(count=7000))
    skewed = np.concatenate([np.zeros(100, int), np.ones(10, int)])
    with pytest.raises(UserError, match=r"balanced subset of 60 needs up to 30 images per class, but class 1: 10"):
        subset_order(skewed, SubsetConfig(count=60, balanced=True))
    with pytest.raises(Exception, match="count or fraction, not both"):
        SubsetConfig(count=5, fraction=0.5)


# ------------------------------------------------------------------------------------------ budgets


def test_label_budgets_per_class_and_fraction_are_nested_and_seeded():
    ten, hundred = (set(budget_indices(LABELS, n, seed=2).tolist()) for n in (10, 100))
    assert ten < hundred
    assert np.bincount(LABELS[list(ten)], minlength=10).tolist() == [10] * 10
    tenth = budget_indices(LABELS, 0.1, seed=2)
    assert len(tenth) == 600 and set(tenth.tolist()) < set(budget_indices(LABELS, 0.5, seed=2).tolist())
    assert len(budget_indices(LABELS, "all", seed=2)) == 6000
    assert not np.array_equal(budget_indices(LABELS, 0.1, seed=2), budget_indices(LABELS, 0.1, seed=3))
    unlabelled = np.where(np.arange(6000) % 2 == 0, LABELS, -1)
    assert (unlabelled[budget_indices(unlabelled, "all", 0)] >= 0).all()
    assert [budget_name(b) for b in (10, 0.1, "all")] == ["10-per-class", "10%", "all"]


# ------------------------------------------------------------------------------------------ pooling


def test_epoch_size_full_repeats_the_subset_to_the_full_split():
    run = RunConfig.model_validate({"data": {"subset": {"count": 1000, "epoch_size": "full"}}})
    (counts,) = pretraining_counts(run, LABELS)
    assert counts.sum() == 6000 and set(np.unique(counts)) == {0, 6}
    assert np.flatnonzero(counts).tolist() == sorted(subset_order(LABELS, run.data.subset).tolist())
    uneven = repeat_counts(np.arange(4), 10, 4)
    assert uneven.tolist() == [3, 3, 2, 2]


def test_pool_weights_share_the_epoch_and_weight_zero_is_evaluation_only():
    run = RunConfig.model_validate({"data": {"pool": [{"path": "a", "weight": 1}, {"path": "b", "weight": 2}]}})
    main, a, b = pretraining_counts(run, LABELS, [500, 10000])
    assert (main.sum(), a.sum(), b.sum()) == (1500, 1500, 3000)
    assert a.max() == 3  # 500 images, 1500 draws: repeated
    assert b.max() == 1 and len(b) == 10000
    only = RunConfig.model_validate({"data": {"pool": [{"path": "a", "weight": 0}]}})
    main, a = pretraining_counts(only, LABELS, [500])
    assert main.sum() == 6000 and a.sum() == 0
    with pytest.raises(Exception, match="nothing to pretrain on"):
        RunConfig.model_validate({"data": {"weight": 0, "pool": [{"path": "a", "weight": 0}]}})
    with pytest.raises(Exception, match="distinct name"):
        RunConfig.model_validate({"data": {"pool": [{"path": "x/a"}, {"path": "y/a"}]}})


def test_to_shape_resizes_and_converts_channels():
    gray = np.full((2, 28, 28, 1), 100, np.uint8)
    rgb = to_shape(gray, (32, 32, 3))
    assert rgb.shape == (2, 32, 32, 3) and (rgb == 100).all()
    colour = np.zeros((1, 32, 32, 3), np.uint8)
    colour[..., 0] = 200  # pure red -> luma 0.299 * 200
    assert to_shape(colour, (28, 28, 1)).shape == (1, 28, 28, 1)
    assert abs(int(to_shape(colour, (28, 28, 1))[0, 10, 10, 0]) - 60) <= 1
    assert to_shape(gray, (28, 28, 1)) is gray


# ------------------------------------------------------------------------------------------ label maps


def test_shipped_fashion_mnist_map_groups_the_ten_classes():
    label_set = resolve_label_set("fashion-mnist-4", {"class_names": FASHION_MNIST_CLASSES, "label_sets": {"label": FASHION_MNIST_CLASSES}})
    assert label_set.class_names == ("tops", "bottoms", "footwear", "bags")
    mapped = label_set.apply(np.arange(10))
    assert mapped.tolist() == [0, 1, 0, 0, 0, 2, 0, 2, 3, 2]
    assert label_set.apply(np.array([-1, 8])).tolist() == [-1, 3]


def _write_map(tmp_path: Path, groups: dict) -> Path:
    import yaml

    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    return path


def test_label_map_must_map_every_class_exactly_once(tmp_path):
    classes = ["cat", "dog", "car"]
    good = load_label_map(_write_map(tmp_path, {"animal": ["cat", "dog"], "vehicle": ["car"]}), classes)
    assert good.name == "map" and good.mapping == (0, 0, 1)
    with pytest.raises(UserError, match=r"(?s)map.yaml: every class must be mapped exactly once:.*classes mapped to no group: 'car'"):
        load_label_map(_write_map(tmp_path, {"animal": ["cat", "dog"]}), classes)
    with pytest.raises(UserError, match=r"class 'dog' is mapped twice \('animal' and 'pet'\)"):
        load_label_map(_write_map(tmp_path, {"animal": ["cat", "dog"], "pet": ["dog"], "vehicle": ["car"]}), classes)
    with pytest.raises(UserError, match=r"'doog' is not a class of the dataset \(did you mean 'dog'\?\)"):
        load_label_map(_write_map(tmp_path, {"animal": ["cat", "doog"], "vehicle": ["car"]}), classes)
    with pytest.raises(UserError, match="neither a label column"):
        resolve_label_set("no-such-map", {"class_names": classes})


# ------------------------------------------------------------------------------------------ kNN and probe


def test_linear_probe_separates_linearly_separable_features():
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(8, 32, generator=generator) * 3
    labels = torch.randint(0, 8, (2000,), generator=generator)
    features = centres[labels] + torch.randn(2000, 32, generator=generator)
    from raysl.config import ProbeConfig

    probe = train_linear_probe(features[:1500], labels[:1500], 8, ProbeConfig(epochs=30))
    accuracy = probe_accuracy(probe, features[1500:], labels[1500:])
    assert accuracy[1] > 0.98 and accuracy[5] == 1.0
    chance = train_linear_probe(features[:1500], labels[torch.randperm(1500, generator=generator)], 8, ProbeConfig(epochs=5))
    assert probe_accuracy(chance, features[1500:], labels[1500:])[1] < 0.5


def test_knn_top5_is_at_least_top1_and_exact_on_a_known_case():
    bank = torch.nn.functional.normalize(torch.eye(6)[:, :6], dim=1)
    bank_labels = torch.arange(6)
    queries = torch.nn.functional.normalize(torch.tensor([[1.0, 0.9, 0, 0, 0, 0]]), dim=1)
    scores = knn_scores(queries, bank, bank_labels, 6, k=6, temperature=0.1)
    assert scores.argmax().item() == 0
    accuracy = topk_accuracy(scores, torch.tensor([1]), (1, 5))
    assert accuracy == {1: 0.0, 5: 1.0}
    few = topk_accuracy(scores[:, :4], torch.tensor([0]), (1, 5))  # top-5 of 4 classes says nothing
    assert few[1] == 1.0 and math.isnan(few[5])


# ------------------------------------------------------------------------------------------ on a prepared dataset


def test_plan_and_full_evaluation_on_a_prepared_dataset(tiny_dataset):
    run = RunConfig.model_validate({
        "data": {"path": tiny_dataset, "subset": {"count": 300, "balanced": True}, "corruption": {"salt_pepper": 0.05}},
        "batch_size": 64, "epochs": 1,
        "evaluation": {"budgets": [5, "all"], "label_sets": ["label"], "probe": {"epochs": 5}, "query_limit": 100},
    })
    plan = plan_pretraining(run, tiny_dataset)
    assert plan.epoch_images == 300 and plan.selective
    images = in_memory_epoch_images(plan)
    assert images.shape == (300, 28, 28, 1)
    assert ((images == 0) | (images == 255)).mean() > 0.04  # the salt and pepper is there
    manifest = read_manifest(tiny_dataset)
    sets = load_eval_sets(run, tiny_dataset)
    assert sets[0].dataset == "prepared" and len(sets[0].query_images) == 100
    trainer = Trainer(run, 1, manifest["mean"], manifest["std"], steps_per_epoch=1)
    rows = trainer.full_evaluation(sets)
    assert [(row["budget"], row["bank_size"]) for row in rows] == [("5-per-class", 50), ("all", 2000)]
    for row in rows:  # 10 classes (chance 0.1) that even an untrained backbone's features tell apart
        assert 0.5 < row["knn_top1"] <= row["knn_top5"] <= 1 and 0.5 < row["probe_top1"] <= row["probe_top5"] <= 1


def test_weight_zero_gets_nothing_and_shares_sum_to_the_epoch():
    from raysl.data.conditions import split_by_weight

    assert split_by_weight(999, [0, 1, 1]) == [0, 500, 499]
    assert split_by_weight(2, [0, 1, 1, 1]) == [0, 1, 1, 0]
    assert sum(split_by_weight(60000, [1, 0.5, 3])) == 60000


def test_relative_paths_are_fixed_where_they_were_written():
    run = RunConfig.model_validate({
        "data": {"path": "data/fmnist", "cache_dir": "~/c", "pool": [{"path": "data/mnist", "name": "m"}, {"path": "s3://b/x", "name": "s"}]},
        "evaluation": {"label_sets": ["label", "fashion-mnist-4", "maps/coarse.yaml"]},
    })
    fixed = run.with_absolute_paths("/work")
    assert fixed.data.path == "/work/data/fmnist" and fixed.data.pool[0].path == "/work/data/mnist"
    assert fixed.data.pool[1].path == "s3://b/x" and fixed.data.cache_dir == str(Path("~/c").expanduser())
    assert fixed.evaluation.label_sets == ["label", "fashion-mnist-4", "/work/maps/coarse.yaml"]


def test_pool_datasets_are_checked_before_ray(tiny_dataset, tmp_path):
    from raysl.training.preflight import check_evaluation
    from raysl.ingest.prepare import prepare

    run = RunConfig.model_validate({"data": {"path": tiny_dataset, "pool": [{"path": tiny_dataset, "name": "again"}]}})
    with pytest.raises(UserError, match=r"data.pool.0: .* is already in the pool \(or is the main dataset\)"):
        check_evaluation(run, tiny_dataset, [tiny_dataset])
    with pytest.raises(Exception, match="two datasets are called"):
        RunConfig.model_validate({"data": {"kind": "mnist", "pool": [{"path": "x/mnist"}]}})
    folder = tmp_path / "unlabeled"
    folder.mkdir()
    from PIL import Image

    for index in range(3):
        Image.fromarray(np.full((28, 28), index * 40, np.uint8)).save(folder / f"{index}.png")
    prepare("image-folder", str(folder), str(tmp_path / "prepared"), unlabeled=True, progress=False, workers=1)
    run = RunConfig.model_validate({"data": {"path": tiny_dataset, "pool": [{"path": str(tmp_path / "prepared"), "name": "u"}]}})
    with pytest.raises(UserError, match=r"data.pool.0: .* has no labels"):
        check_evaluation(run, tiny_dataset, [str(tmp_path / "prepared")])
