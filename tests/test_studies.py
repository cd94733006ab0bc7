"""Data conditions end to end on real Ray: a run pretrained on a balanced subset of one dataset pooled with
real MNIST digits, corrupted, evaluated per domain and label set with kNN and a linear probe after its last
epoch (eval.json in the checkpoint), then `raysl eval` on that checkpoint with other budgets."""

from __future__ import annotations

import json

import pytest
import yaml

from raysl.cli import main

pytestmark = pytest.mark.slow


def test_conditions_pool_corruption_and_final_evaluation(tiny_dataset, mnist_5k, tmp_path, capsys, ray_address):
    parity = tmp_path / "parity.yaml"
    parity.write_text(yaml.safe_dump({"name": "parity", "groups": {"even": ["0", "2", "4", "6", "8"], "odd": ["1", "3", "5", "7", "9"]}}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "data": {
            "path": tiny_dataset,
            "subset": {"count": 500, "balanced": True, "epoch_size": "full"},
            "corruption": {"salt_pepper": 0.01, "jpeg_quality": 50},
            "pool": [{"path": mnist_5k, "name": "mnist", "weight": 0.5}],
        },
        "model": {"width": 8, "projector_hidden": 32, "projector_out": 16},
        "epochs": 1, "batch_size": 128, "schedule": {"warmup_epochs": 0},
        "evaluation": {"label_sets": ["label", str(parity)], "budgets": [5, "all"], "final": True,
                       "probe": {"epochs": 5}, "query_limit": 200},
        "resources": {"workers": 1, "cpus_per_worker": 1, "data_cpus": 0.5, "torch_threads": 1},
        "storage_path": str(tmp_path / "results"), "name": "pooled",
    }))
    assert main(["train", str(config)]) == 0
    out = capsys.readouterr().out
    assert "done: 1 epochs" in out
    run_dir = tmp_path / "results" / "pooled"
    assert (run_dir / "corruption_samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (written,) = run_dir.glob("checkpoint_*/eval.json")
    document = json.loads(written.read_text())
    assert document["epoch"] == 1 and document["data"]["pool"][0]["name"] == "mnist"
    cells = {(row["dataset"], row["label_set"], row["budget"]): row for row in document["results"]}
    assert set(cells) == {(d, s, b) for d, s in (("prepared", "label"), ("prepared", "parity"), ("mnist", "label"))
                          for b in ("5-per-class", "all")}
    assert cells[("prepared", "parity", "5-per-class")]["bank_size"] == 10 and cells[("prepared", "parity", "all")]["classes"] == 2
    assert cells[("mnist", "label", "all")]["bank_size"] == 4000
    # Real MNIST digits seen in pretraining (a third of the images): far above chance (10%) with every label.
    assert cells[("mnist", "label", "all")]["knn_top1"] > 0.3 and cells[("mnist", "label", "all")]["probe_top1"] > 0.3
    for row in document["results"]:
        if row["classes"] > 5:
            assert row["knn_top1"] <= row["knn_top5"] and row["probe_top1"] <= row["probe_top5"]
        else:  # top-5 of 2 classes says nothing: null, not 1.0
            assert row["knn_top5"] is None and row["probe_top5"] is None

    assert main(["eval", str(run_dir), "--set", "evaluation.budgets=[0.1]", "--set", "evaluation.label_sets=[label]",
                 "--set", "evaluation.probe.epochs=2"]) == 0
    again = json.loads(written.read_text())
    assert {(row["dataset"], row["label_set"], row["budget"]) for row in again["results"]} == {
        ("prepared", "label", "10%"), ("mnist", "label", "10%")}
    assert [row["bank_size"] for row in again["results"]] == [200, 400]


def test_bad_label_map_and_oversized_subset_fail_before_ray(tiny_dataset, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"groups": {"low": ["0", "1", "2"], "high": ["2", "3"]}}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": tiny_dataset}, "evaluation": {"label_sets": ["label", str(bad)]}}))
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: every class must be mapped exactly once" in err and "class '2' is mapped twice" in err
    assert "classes mapped to no group: '4', '5'" in err and "Traceback" not in err
    config.write_text(yaml.safe_dump({"data": {"path": tiny_dataset, "subset": {"count": 5000}}}))
    assert main(["train", str(config)]) == 2
    assert "data.subset.count 5000 exceeds the 2000 images of the train split" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()
