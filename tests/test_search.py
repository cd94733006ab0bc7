"""What a sweep optimises and how it searches: `metric` / `mode` used by the Tuner, the leaderboard and the best
config; `search_alg` random / grid / optuna, each validated before Ray starts and seeded; the leaderboard's
compute columns; several experiments compared in one table and plot (raysl report A B --out)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml

from raysl.cli import main
from raysl.config import SweepConfig, load_sweep_config
from raysl.errors import UserError
from raysl.ray_glue.search import build_search_alg, to_tune
from raysl.report.build import build_report
from tests.test_report import epoch_rows, sweep_dict, write_experiment

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path, **fields) -> Path:
    data = {"base": {"epochs": 3}, "search": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, **fields}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("fields, message", [
    ({"metric": "knn_top_1"}, "metric 'knn_top_1': not a figure trials report; .*did you mean 'knn_top1'"),
    ({"metric": "eval/fashion-mnist:label/all/probe_top1"}, "asha compares trials while they run; use scheduler"),
    ({"metric": "eval/fashion-mnist:label/all/probe_top1", "scheduler": {"name": "fifo"}}, "base.evaluation.final is false"),
    ({"search_alg": "grid"}, "search_alg grid: search.optimizer.lr is a loguniform"),
    ({"search_alg": "optuna", "search": {"seed": {"grid": [1, 2]}}}, "search_alg optuna: search.seed is a grid; .*choice"),
    ({"search_alg": "bayes"}, "search_alg"),
])
def test_metric_and_search_alg_mistakes_are_named_before_ray_starts(tmp_path, fields, message):
    with pytest.raises(UserError, match=message):
        load_sweep_config(_sweep(tmp_path, **fields))


def test_metric_mode_defaults_by_metric_and_optuna_counts_num_samples(tmp_path):
    assert load_sweep_config(_sweep(tmp_path)).resolved_mode == "max"
    assert load_sweep_config(_sweep(tmp_path, metric="loss")).resolved_mode == "min"
    assert load_sweep_config(_sweep(tmp_path, metric="loss", mode="max")).resolved_mode == "max"
    final = {"metric": "eval/fashion-mnist:label/all/probe_top1", "scheduler": {"name": "fifo"},
             "base": {"epochs": 3, "evaluation": {"final": True}}}
    assert load_sweep_config(_sweep(tmp_path, **final)).metric.endswith("probe_top1")
    optuna = load_sweep_config(_sweep(tmp_path, search_alg="optuna", num_samples=7))
    assert optuna.trial_count == 7
    smoke = load_sweep_config(ROOT / "sweeps" / "moco-optuna.yaml", smoke=True)
    assert smoke.search_alg == "optuna" and smoke.trial_count == 2 and len(smoke.search) == 4  # Optuna still searches


def _draws(sweep: SweepConfig, count: int = 5) -> list[dict]:
    """What the sweep's search algorithm proposes for `count` trials, each scored (its lr) before the next."""
    search = build_search_alg(sweep)
    search.set_search_properties(sweep.metric, sweep.resolved_mode, {"search": {k: to_tune(d) for k, d in sweep.search.items()}})
    draws = []
    for index in range(count):
        config = search.suggest(f"trial_{index}")
        draws.append(config["search"])
        search.on_trial_complete(f"trial_{index}", {sweep.metric: config["search"]["optimizer.lr"]})
    return draws


def test_optuna_search_draws_the_same_values_with_the_same_seed(tmp_path):
    fields = {"search": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}, "method.temperature": {"choice": [0.1, 0.2, 0.5]}}}
    seeded = load_sweep_config(_sweep(tmp_path, search_alg="optuna", search_seed=3, num_samples=5, **fields))
    again, other = _draws(seeded), _draws(seeded.model_copy(update={"search_seed": 4}))
    assert _draws(seeded) == again != other
    assert all(1e-4 <= draw["optimizer.lr"] <= 1e-2 and draw["method.temperature"] in (0.1, 0.2, 0.5) for draw in again)


def test_optuna_draws_from_its_model_after_its_startup_trials(tmp_path):
    fields = {"search": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}, "search_alg": "optuna", "search_seed": 3,
              "num_samples": 12}
    assert load_sweep_config(_sweep(tmp_path, **fields)).startup_trials == 3  # a quarter, not Optuna's 10
    assert load_sweep_config(_sweep(tmp_path, **{**fields, "num_samples": 100})).startup_trials == 10
    early, late = (np.log10([draw["optimizer.lr"] for draw in _draws(load_sweep_config(
        _sweep(tmp_path, **fields, optuna_startup_trials=startup)), 12)]) for startup in (2, 12))
    assert np.array_equal(early[:2], late[:2]) and not np.array_equal(early[2:], late[2:])  # random, then the model
    assert early[2:].mean() > late[2:].mean()  # the score is the lr: the model draws higher ones than chance
    with pytest.raises(UserError, match="optuna_startup_trials: only for search_alg optuna"):
        load_sweep_config(_sweep(tmp_path, optuna_startup_trials=2))


def test_the_leaderboard_ranks_by_the_sweeps_metric_and_counts_compute(tmp_path):
    trials = [
        {"id": "m_00000", "params": {"optimizer.lr": 0.001}, "rows": epoch_rows("m_00000", [0.5, 0.6], loss=4.0)},
        {"id": "m_00001", "params": {"optimizer.lr": 0.002}, "rows": epoch_rows("m_00001", [0.4, 0.5], loss=1.0)},
    ]
    for trial in trials:
        for epoch, row in enumerate(trial["rows"], start=1):
            row["time_total_s"] = 100.0 * epoch
    sweep = sweep_dict({"optimizer.lr": [0.001, 0.002]}, epochs=2)
    sweep["base"]["resources"] = {"workers": 2, "cpus_per_worker": 1.0, "gpus_per_worker": 0.5, "data_cpus": 0.5}
    experiment = write_experiment(tmp_path / "by-loss", {**sweep, "metric": "loss"}, trials)
    build_report(str(experiment), log=lambda line: None)
    with open(experiment / "leaderboard.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["m_00001", "m_00000"]  # lowest loss first, though its kNN is lower
    assert float(rows[0]["loss"]) == 1.0 and list(rows[0])[:3] == ["trial", "optimizer.lr", "loss"]
    assert float(rows[0]["cpu_seconds"]) == pytest.approx(200 * (0.1 + 2 * 1.0 + 1 * 0.5))  # driver, workers, actor
    assert float(rows[0]["gpu_seconds"]) == pytest.approx(200 * 2 * 0.5)
    markdown = (experiment / "leaderboard.md").read_text()
    assert "Ranked by `loss` (minimum over epochs)." in markdown and "0.29 CPU-hours, 0.11 GPU-hours" in markdown


def test_report_compares_several_experiments_in_one_table_and_plot(tmp_path, capsys):
    first = write_experiment(tmp_path / "a" / "moco", sweep_dict({"optimizer.lr": [0.1]}, epochs=2),
                             [{"id": "a_00000", "params": {"optimizer.lr": 0.1}, "rows": epoch_rows("a_00000", [0.5, 0.7])}])
    second = write_experiment(tmp_path / "b" / "moco", sweep_dict({"method.temperature": [0.2]}, epochs=2),
                              [{"id": "b_00000", "params": {"method.temperature": 0.2}, "rows": epoch_rows("b_00000", [0.6, 0.8])}])
    out = tmp_path / "compare"
    assert main(["report", str(first), str(second)]) == 2  # several need --out
    assert "--out" in capsys.readouterr().err
    assert main(["report", str(first), str(second), "--out", str(out)]) == 0
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["experiment"], row["trial"]) for row in rows] == [(f"moco ({second})", "b_00000"), (f"moco ({first})", "a_00000")]
    assert rows[0]["method.temperature"] == "0.2" and rows[0]["optimizer.lr"] == ""  # each its own swept keys
    assert (out / "plots" / "comparison_knn_per_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert "comparison_knn_per_epoch.png" in (out / "comparison.md").read_text()


# ----------------------------------------------------------------------------- the live view


def _trial(trial_id: str, status: str, epoch: int = 0, knn: float | None = None, lr: float = 0.01):
    from types import SimpleNamespace

    result = {"epoch": epoch, "knn_top1": knn, "loss": 2.0, "images_per_s": 400.0} if epoch else {}
    return SimpleNamespace(trial_id=trial_id, status=status, last_result=result, config={"search": {"optimizer.lr": lr}})


def _view(interactive: bool):
    from raysl.ray_glue.live import LiveView

    return LiveView(search_keys=["optimizer.lr"], metric="knn_top1", mode="max", max_epochs=3, trial_count=2,
                    time_budget_s=600, interactive=interactive, refresh_s=0.0)


def test_the_live_view_prints_one_line_per_trial_event_when_not_a_terminal(capsys):
    view = _view(interactive=False)
    steps = [
        [_trial("a", "RUNNING"), _trial("b", "PENDING")],
        [_trial("a", "RUNNING"), _trial("b", "PENDING")],  # nothing happened: nothing printed
        [_trial("a", "RUNNING", 1, 0.5), _trial("b", "RUNNING", lr=0.02)],
        [_trial("a", "TERMINATED", 1, 0.5), _trial("b", "RUNNING", 3, 0.7, lr=0.02)],
        [_trial("a", "TERMINATED", 1, 0.5), _trial("b", "PAUSED", 3, 0.7, lr=0.02)],  # a PBT exploit pauses it
        [_trial("a", "TERMINATED", 1, 0.5), _trial("b", "RUNNING", 3, 0.7, lr=0.024)],  # then resumes, new values
    ]
    printed = []
    for trials in steps:
        if view.should_report(trials):
            view.report(trials, False)
        printed.append(capsys.readouterr().out.splitlines())
    assert printed[0] == ["trial a started: lr=0.01"] and printed[1] == []
    assert printed[2] == ["trial a epoch 1/3: knn_top1 0.5 (best 0.5), loss 2, 400 img/s", "trial b started: lr=0.02"]
    assert printed[3][0].startswith("trial a stopped after 1 epoch (") and "1/2 trials done" in printed[3][0]
    assert printed[3][1] == "trial b epoch 3/3: knn_top1 0.7 (best 0.7), loss 2, 400 img/s"
    assert printed[4] == [] and printed[5] == ["trial b restarted from a checkpoint: lr=0.024"]
    assert not any("\x1b[" in line for lines in printed for line in lines)


def test_the_live_view_redraws_one_table_in_place_on_a_terminal(capsys, monkeypatch):
    from raysl.ray_glue import live

    monkeypatch.setattr(live.sys.stdout, "isatty", lambda: True, raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert live.interactive_output()
    monkeypatch.setenv("TERM", "dumb")
    assert not live.interactive_output()
    view = _view(interactive=True)
    view.report([_trial("a", "RUNNING", 1, 0.5), _trial("b", "PENDING")], False)
    first = capsys.readouterr().out
    assert "\x1b[" not in first and first.splitlines()[1].split() == ["trial", "lr", "best", "knn_top1", "epochs", "status"]
    assert first.splitlines()[2].split() == ["a", "0.01", "–", "1/3", "running"]  # best: read in should_report
    view.should_report([_trial("a", "RUNNING", 2, 0.6), _trial("b", "RUNNING", 1, 0.4, lr=0.02)])
    view.report([_trial("a", "RUNNING", 2, 0.6), _trial("b", "RUNNING", 1, 0.4, lr=0.02)], False)
    second = capsys.readouterr().out
    assert second.startswith(f"\x1b[{len(first.splitlines())}F\x1b[J")  # up over the last table, cleared
    assert second.splitlines()[2].split() == ["a", "0.01", "0.6", "2/3", "running"]
    assert "at most ~" in second.splitlines()[0]  # the ETA: 3 trial-epochs done, 3 to go
