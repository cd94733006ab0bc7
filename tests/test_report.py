"""`raysl report` (raysl/report.py): leaderboard and plots from a real smoke sweep's experiment directory,
from the same directory made to look interrupted (a RUNNING and a never-started trial), from synthesised
experiments (failures, ASHA stops, resumed epochs, the four study figures) and from object storage."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image

from conftest import moto_s3
from raysl.config import SweepConfig, dump_yaml, load_sweep_config
from raysl.errors import UserError
from raysl.report.build import build_report
from raysl.report.experiment import ASHA_STOPS, ENDING_FILE, error_status, load_experiment
from raysl.report.tensorboard import HPARAMS_FILE

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "sweeps" / "quickstart.yaml"
STATE = "experiment_state-2026-01-02_03-04-05.json"


# ----------------------------------------------------------------------------- helpers


def assert_png(data: bytes) -> None:
    """A real, small PNG with something drawn on it."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    assert len(data) < 150_000
    colors = image.convert("RGB").getcolors(maxcolors=1 << 16)
    assert colors is None or len(colors) > 2, "a blank image"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def epoch_rows(trial_id: str, knn: list[float], **last: Any) -> list[dict[str, Any]]:
    """result.json lines of a trial with these per-epoch kNN scores; `last` goes into the last line."""
    rows = [
        {"epoch": epoch, "loss": 5.0 / epoch, "knn_top1": value, "images_per_s": 500.0 + epoch,
         "trial_id": trial_id, "training_iteration": epoch, "resumed_at_epoch": 0}
        for epoch, value in enumerate(knn, start=1)
    ]
    if rows:
        rows[-1].update(last)
    return rows


def write_experiment(root: Path, sweep: dict[str, Any] | None, trials: list[dict[str, Any]]) -> Path:
    """An experiment directory as Tune + raysl write it. Each trial: id, params, rows, and optionally state
    (default TERMINATED) and error (error.txt); a PENDING trial gets no directory."""
    root.mkdir(parents=True, exist_ok=True)
    if sweep is not None:
        (root / "sweep.yaml").write_text(dump_yaml(SweepConfig.model_validate(sweep)))
    entries = []
    for trial in trials:
        state = trial.get("state", "TERMINATED")
        info = {"trial_id": trial["id"], "status": state, "config": {"search": trial["params"]},
                "relative_logdir": f"trial_{trial['id']}"}
        entries.append([json.dumps(info), json.dumps({"last_result": {}})])
        if state == "PENDING":
            continue
        directory = root / f"trial_{trial['id']}"
        directory.mkdir()
        (directory / "params.json").write_text(json.dumps({"search": trial["params"]}))
        (directory / "result.json").write_text("".join(json.dumps(row) + "\n" for row in trial["rows"]))
        if "error" in trial:
            (directory / "error.txt").write_text(trial["error"])
    (root / STATE).write_text(json.dumps({"trial_data": entries, "runner_data": {}, "stats": {}}))
    return root


def sweep_dict(search: dict[str, list[Any]], *, epochs: int = 3, **base: Any) -> dict[str, Any]:
    return {"base": {"epochs": epochs, "schedule": {"warmup_epochs": 0}, **base},
            "search": {key: {"grid": values} for key, values in search.items()},
            "scheduler": {"name": "fifo"}, "name": "synthetic"}


def produced(experiment: Path) -> set[str]:
    return {path.name for path in (experiment / "plots").glob("*.png")}


# ----------------------------------------------------------------------------- a real sweep


@pytest.fixture(scope="module")
def real_experiment(tiny_dataset, tmp_path_factory, shared_ray_address) -> Path:
    """The quickstart sweep's smoke version (two one-epoch trials) run through the CLI, in this process, on the
    session's shared Ray (conftest)."""
    from raysl.cli import main

    overrides = [f"base.data.path={tiny_dataset}", f"storage_path={tmp_path_factory.mktemp('report-sweep')}"]
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setenv("RAY_ADDRESS", shared_ray_address)
        patch.setenv("RAY_AIR_NEW_OUTPUT", "0")  # run_sweep sets it; restored afterwards
        code = main(["sweep", str(QUICKSTART), "--smoke", *[arg for item in overrides for arg in ("--set", item)]])
    assert code == 0, output.getvalue()[-3000:]
    experiment = Path(output.getvalue().strip().splitlines()[-1])
    # The sweep writes sweep.yaml itself (what `raysl report` reads: search keys, epochs; docs/configuration.md):
    # the validated smoke sweep with the overrides, nothing made up here.
    assert (experiment / "sweep.yaml").is_file(), f"the sweep wrote no sweep.yaml in {experiment}"
    written = load_sweep_config(experiment / "sweep.yaml")
    expected = load_sweep_config(QUICKSTART, overrides, smoke=True)
    assert written.base.epochs == expected.base.epochs == 1 and list(written.search) == list(expected.search)
    assert Path(written.storage_path) == Path(overrides[1].split("=", 1)[1])
    return experiment


def copy_experiment(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("train", "leaderboard.*", "plots"))
    return target


@pytest.mark.slow
def test_report_of_a_real_sweep(real_experiment):
    lines: list[str] = []
    written = build_report(str(real_experiment), log=lines.append)
    assert len(lines) == len(written) and all(str(real_experiment) in line for line in lines)
    trials = sorted(path.name for path in real_experiment.glob("trial_*"))
    assert len(trials) == 2

    rows = read_csv(real_experiment / "leaderboard.csv")
    assert sorted(f"trial_{row['trial']}" for row in rows) == trials
    assert {row["status"] for row in rows} == {"completed"} and {row["epochs"] for row in rows} == {"1"}
    assert {row["method.temperature"] for row in rows} == {"0.1", "0.2"}
    assert float(rows[0]["knn_top1"]) >= float(rows[1]["knn_top1"]) > 0
    markdown = (real_experiment / "leaderboard.md").read_text()
    assert markdown.startswith(f"# Sweep report: {real_experiment.name}\n")
    assert "k=200" in markdown and "Trials: 2 (2 completed)" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert len(table) == 3 and "| trial | method.temperature | knn_top1 |" in table[0]

    assert produced(real_experiment) == {"knn_per_epoch.png", "final_vs_method_temperature.png"}
    for name in produced(real_experiment):
        assert_png((real_experiment / "plots" / name).read_bytes())
    assert str(real_experiment / "plots" / "knn_per_epoch.png") in written


@pytest.mark.slow
def test_report_of_an_interrupted_sweep(real_experiment, tmp_path):
    experiment = copy_experiment(real_experiment, tmp_path / "interrupted")
    sweep = yaml.safe_load((experiment / "sweep.yaml").read_text())
    sweep["base"]["epochs"] = 3  # the sweep meant to run 3 epochs; the driver died after the first
    (experiment / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    state_file = max(experiment.glob("experiment_state-*.json"))
    state = json.loads(state_file.read_text())
    running, pending = sorted(json.loads(entry[0])["trial_id"] for entry in state["trial_data"])
    for entry in state["trial_data"]:
        info = json.loads(entry[0])
        info["status"] = "RUNNING" if info["trial_id"] == running else "PENDING"
        entry[0] = json.dumps(info)
    state_file.write_text(json.dumps(state))
    (experiment / f"trial_{pending}" / "result.json").write_text('{"epoch": 1, "lo')  # cut short

    build_report(str(experiment), log=lambda line: None)
    rows = read_csv(experiment / "leaderboard.csv")
    assert [(row["trial"], row["status"]) for row in rows] == [
        (running, "running or interrupted (epoch 1)"), (pending, "not started"),
    ]
    assert rows[1]["knn_top1"] == "" and rows[1]["method.temperature"] == "0.2"  # from the state's config
    assert "Trials: 2 (1 running or interrupted, 1 not started)" in (experiment / "leaderboard.md").read_text()
    assert_png((experiment / "plots" / "knn_per_epoch.png").read_bytes())


@pytest.mark.slow
def test_report_without_sweep_yaml(real_experiment, tmp_path):
    experiment = copy_experiment(real_experiment, tmp_path / "old")
    (experiment / "sweep.yaml").unlink()
    loaded = load_experiment(str(experiment))
    assert loaded.sweep is None and loaded.search_keys == ["method.temperature"] and loaded.max_epochs == 1
    build_report(str(experiment), log=lambda line: None)
    assert {row["status"] for row in read_csv(experiment / "leaderboard.csv")} == {"completed"}
    assert "no sweep.yaml" in (experiment / "leaderboard.md").read_text()
    assert {"knn_per_epoch.png", "final_vs_method_temperature.png"} <= produced(experiment)


# ----------------------------------------------------------------------------- synthesised experiments


def test_statuses_order_and_resumed_epochs(tmp_path):
    sweep = sweep_dict({"optimizer.lr": [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007]}, epochs=4)
    sweep["scheduler"] = {"name": "asha", "grace_period": 1}
    resumed = epoch_rows("x_00005", [0.1, 0.2]) + epoch_rows("x_00005", [0.3, 0.4, 0.55])  # epochs 1, 2 again
    experiment = write_experiment(tmp_path / "exp", sweep, [
        {"id": "x_00000", "params": {"optimizer.lr": 0.001}, "rows": epoch_rows("x_00000", [0.3, 0.5, 0.6, 0.123456])},
        {"id": "x_00001", "params": {"optimizer.lr": 0.002}, "rows": epoch_rows("x_00001", [0.2])},
        {"id": "x_00002", "params": {"optimizer.lr": 0.003}, "rows": epoch_rows("x_00002", [0.25]), "state": "ERROR",
         "error": "Traceback ...\nraysl.training.loop.NonFiniteLossError: loss became inf at epoch 2, step 37\n"},
        {"id": "x_00003", "params": {"optimizer.lr": 0.004}, "rows": [], "state": "ERROR",
         "error": "ValueError: bad\nThe above exception was the direct cause of:\nRuntimeError: trial x_00003 failed"},
        {"id": "x_00004", "params": {"optimizer.lr": 0.005}, "rows": [], "state": "PENDING"},
        {"id": "x_00005", "params": {"optimizer.lr": 0.006}, "rows": resumed, "state": "RUNNING"},
        # Failed once (its node lost), retried by Tune and finished: error.txt stays, Tune's state says TERMINATED.
        {"id": "x_00006", "params": {"optimizer.lr": 0.007}, "rows": epoch_rows("x_00006", [0.1, 0.2, 0.3, 0.4]),
         "error": "ray.exceptions.RpcError: the node died"},
    ])
    (experiment / "experiment_state-2025-01-01_00-00-00.json").write_text('{"trial_data": []}')  # older: ignored
    build_report(str(experiment), log=lambda line: None)
    rows = read_csv(experiment / "leaderboard.csv")
    assert [(row["trial"], row["status"]) for row in rows] == [
        ("x_00000", "completed"),
        ("x_00005", "running or interrupted (epoch 3)"),
        ("x_00006", "completed"),
        ("x_00002", "failed: loss inf at epoch 2 step 37"),
        ("x_00001", "stopped early (ASHA)"),
        ("x_00003", "failed: RuntimeError"),
        ("x_00004", "not started"),
    ]
    assert rows[0]["knn_top1"] == "0.6" and rows[0]["last_knn_top1"] == "0.123456" and rows[0]["epochs"] == "4"
    assert rows[1]["knn_top1"] == "0.55" and rows[1]["epochs"] == "3"
    loaded = load_experiment(str(experiment))
    assert [row["knn_top1"] for row in next(t for t in loaded.trials if t.trial_id == "x_00005").rows] == [0.3, 0.4, 0.55]
    markdown = (experiment / "leaderboard.md").read_text()
    assert "| x_00000 | 0.001 | 0.6 | 0.1235 | 4 | completed |" in markdown
    assert "Trials: 7 (2 completed, 1 stopped early (ASHA), 2 failed, 1 not started, 1 running or interrupted)" in markdown
    assert produced(experiment) == {"knn_per_epoch.png", "final_vs_optimizer_lr.png"}


def test_error_status():
    assert error_status("NonFiniteLossError: loss became nan at epoch 3, step 120") == "failed: loss nan at epoch 3 step 120"
    assert error_status("KeyError: 'x'\n...\nray.exceptions.RayTaskError(KeyError)") == "failed: KeyError"
    assert error_status("killed") == "failed"


def test_not_an_experiment(tmp_path):
    with pytest.raises(UserError, match=rf"no Tune experiment at {tmp_path} \(no experiment_state"):
        build_report(str(tmp_path))
    with pytest.raises(UserError, match="no Tune experiment at .*missing"):
        build_report(str(tmp_path / "missing"))


def quantity_experiment(root: Path) -> Path:
    """Subset size x method, each twice (two seeds): the quantity study with min-max error bars."""
    trials, index = [], 0
    for seed in (0, 1):
        for method in ("simclr", "simsiam"):
            for count in (1000, 4000, 16000):
                final = 0.5 + 0.05 * [1000, 4000, 16000].index(count) + 0.01 * seed + (0.02 if method == "simclr" else 0)
                params = {"data.subset.count": count, "method.name": method, "seed": seed}
                trial_id = f"q_{index:05d}"
                trials.append({"id": trial_id, "params": params, "rows": epoch_rows(trial_id, [final - 0.1, final - 0.05, final])})
                index += 1
    sweep = sweep_dict({"data.subset.count": [1000, 4000, 16000], "method.name": ["simclr", "simsiam"], "seed": [0, 1]})
    return write_experiment(root, sweep, trials)


def test_study_quantity(tmp_path):
    experiment = quantity_experiment(tmp_path / "quantity")
    build_report(str(experiment), log=lambda line: None)
    assert produced(experiment) == {
        "knn_per_epoch.png", "final_vs_data_subset_count.png", "final_vs_method_name.png", "final_vs_seed.png",
        "study_quantity.png",
    }
    for name in produced(experiment):
        assert_png((experiment / "plots" / name).read_bytes())
    assert len(read_csv(experiment / "leaderboard.csv")) == 12


def test_study_quality(tmp_path):
    trials = []
    for index, (salt, noise) in enumerate((s, n) for s in (0.0, 0.01, 0.05) for n in (0.0, 0.1)):
        trial_id = f"c_{index:05d}"
        trials.append({"id": trial_id, "params": {"data.corruption.salt_pepper": salt, "data.corruption.gaussian_noise": noise},
                       "rows": epoch_rows(trial_id, [0.5, 0.6, 0.7 - salt - noise / 2])})
    trials[-1]["rows"] = trials[-1]["rows"][:1]  # one cut short: not in the study
    sweep = sweep_dict({"data.corruption.salt_pepper": [0.0, 0.01, 0.05], "data.corruption.gaussian_noise": [0.0, 0.1]})
    sweep["time_budget_minutes"] = 5
    experiment = write_experiment(tmp_path / "quality", sweep, trials)
    build_report(str(experiment), log=lambda line: None)
    assert "study_quality.png" in produced(experiment) and "study_quantity.png" not in produced(experiment)
    assert_png((experiment / "plots" / "study_quality.png").read_bytes())
    assert read_csv(experiment / "leaderboard.csv")[-1]["status"] == "stopped by the time budget (epoch 1)"


def test_study_granularity_with_final_evaluation(tmp_path):
    trials = []
    for index, lr in enumerate((0.001, 0.01)):
        trial_id = f"g_{index:05d}"
        final = {"knn_top1/fashion-mnist:fashion-mnist-4": 0.9 + index / 50}
        for name, value in (("fashion-mnist:label", 0.8), ("fashion-mnist:fashion-mnist-4", 0.92)):
            for budget in ("all", "10-per-class", "10%"):
                for metric in ("knn_top1", "knn_top5", "probe_top1", "probe_top5"):
                    final[f"eval/{name}/{budget}/{metric}"] = value - (0.1 if budget != "all" else 0) + index / 100
        rows = epoch_rows(trial_id, [0.7, 0.75, 0.8 + index / 100], **final)
        rows[0]["knn_top1/fashion-mnist:fashion-mnist-4"] = 0.85
        trials.append({"id": trial_id, "params": {"optimizer.lr": lr}, "rows": rows})
    sweep = sweep_dict({"optimizer.lr": [0.001, 0.01]},
                       evaluation={"label_sets": ["label", "fashion-mnist-4"], "final": True, "budgets": ["all", 10, 0.1]})
    experiment = write_experiment(tmp_path / "granularity", sweep, trials)
    build_report(str(experiment), log=lambda line: None)
    assert "study_granularity.png" in produced(experiment) and "study_domain.png" not in produced(experiment)
    assert_png((experiment / "plots" / "study_granularity.png").read_bytes())
    columns = list(read_csv(experiment / "leaderboard.csv")[0])
    assert "eval/fashion-mnist:label/10%/probe_top5" in columns and "knn_top1/fashion-mnist:fashion-mnist-4" in columns
    header = next(line for line in (experiment / "leaderboard.md").read_text().splitlines() if line.startswith("| trial"))
    assert "eval/fashion-mnist:fashion-mnist-4/all/probe_top1" in header and "10-per-class" not in header
    assert load_experiment(str(experiment)).main_set == "fashion-mnist:label"


def test_study_domain_without_sweep_yaml(tmp_path):
    trials = []
    for index, weight in enumerate((0.5, 1.0, 2.0)):
        trial_id = f"d_{index:05d}"
        rows = epoch_rows(trial_id, [0.6, 0.7], **{"knn_top1/mnist:label": 0.5 + weight / 10,
                                                   "knn_top1/fashion-mnist:fashion-mnist-4": 0.9})
        trials.append({"id": trial_id, "params": {"data.pool.0.weight": weight}, "rows": rows})
    experiment = write_experiment(tmp_path / "domain", None, trials)  # main dataset: the one with a coarser set
    assert load_experiment(str(experiment)).main_set == "fashion-mnist:label"
    build_report(str(experiment), log=lambda line: None)
    assert {"study_domain.png", "study_granularity.png"} <= produced(experiment)
    assert_png((experiment / "plots" / "study_domain.png").read_bytes())


# ----------------------------------------------------------------------------- object storage


BUCKET = "raysl-report"


@pytest.fixture
def s3():
    with moto_s3(BUCKET):
        import boto3

        yield boto3.client("s3")


def test_report_on_object_storage(s3, tmp_path):
    local = quantity_experiment(tmp_path / "exp")
    for path in local.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), BUCKET, f"results/exp/{path.relative_to(local)}")
    written = build_report(f"s3://{BUCKET}/results/exp", log=lambda line: None)
    assert all(uri.startswith(f"s3://{BUCKET}/results/exp/") for uri in written)
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="results/exp/")["Contents"]}
    assert {"results/exp/leaderboard.md", "results/exp/leaderboard.csv", "results/exp/plots/study_quantity.png"} <= keys
    markdown = s3.get_object(Bucket=BUCKET, Key="results/exp/leaderboard.md")["Body"].read().decode()
    assert markdown.startswith("# Sweep report: exp\n") and "12 completed" in markdown
    assert_png(s3.get_object(Bucket=BUCKET, Key="results/exp/plots/knn_per_epoch.png")["Body"].read())


def hparams_of(trial_dir: Path) -> dict[str, Any]:
    """The trial's hparams and metric values as TensorBoard's own event reader sees them (HParams view)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    reader = EventAccumulator(str(trial_dir))
    reader.Reload()
    content = reader.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {key: value.string_value or value.number_value for key, value in start.hparams.items()}
    metrics = {tag: reader.Scalars(tag)[-1].value for tag in reader.Tags()["scalars"]}
    return {**values, **metrics}


@pytest.mark.parametrize("ended, running, pending", [
    # Ctrl-C: Tune's state still calls the running trial RUNNING and the next PENDING
    ({"ended": "interrupted"}, "interrupted (epoch 1)", "not started (interrupted)"),
    # the time budget: Tune stops every live trial (TERMINATED, like ASHA's stops: those are in ASHA_STOPS)
    ({"time_budget_minutes": 5}, "stopped by the time budget (epoch 1)", "not started (stopped by the time budget)"),
])
def test_every_trial_however_it_ended_has_its_status_and_hparams(tmp_path, ended, running, pending):
    trials = [
        {"id": "e_00000", "params": {"optimizer.lr": 0.001}, "rows": epoch_rows("e_00000", [0.4, 0.5, 0.55])},
        {"id": "e_00001", "params": {"optimizer.lr": 0.002}, "rows": epoch_rows("e_00001", [0.3])},
        {"id": "e_00002", "params": {"optimizer.lr": 0.003}, "rows": epoch_rows("e_00002", [0.45]), "state": "RUNNING"},
        {"id": "e_00003", "params": {"optimizer.lr": 0.004}, "rows": [], "state": "PENDING"},
        {"id": "e_00004", "params": {"optimizer.lr": 0.005}, "rows": epoch_rows("e_00004", [0.2]), "state": "ERROR",
         "error": "RuntimeError: loss became nan at epoch 2, step 9"},
    ]
    sweep = sweep_dict({"optimizer.lr": [0.001, 0.002, 0.003, 0.004, 0.005]})
    sweep["scheduler"] = {"name": "asha", "grace_period": 1}
    if "time_budget_minutes" in ended:
        sweep["time_budget_minutes"] = ended["time_budget_minutes"]
        for trial in trials[2:4]:
            trial["state"] = "TERMINATED"
    experiment = write_experiment(tmp_path / "ends", sweep, trials)
    (experiment / "trial_e_00003").mkdir(exist_ok=True)  # Tune made its directory before the sweep stopped
    (experiment / ENDING_FILE).write_text(json.dumps({"ended": ended.get("ended", "finished")}))
    (experiment / ASHA_STOPS).write_text(json.dumps({"e_00001": 1}))
    build_report(str(experiment), log=lambda line: None)
    statuses = {row["trial"]: row["status"] for row in read_csv(experiment / "leaderboard.csv")}
    assert statuses == {"e_00000": "completed", "e_00001": "stopped early (ASHA)", "e_00002": running,
                        "e_00003": pending, "e_00004": "failed: loss nan at epoch 2 step 9"}
    for trial_id, status in statuses.items():
        seen = hparams_of(experiment / f"trial_{trial_id}")
        assert seen["status"] == status and seen["trial"] == trial_id
        assert seen["optimizer.lr"] == pytest.approx(float(trial_id[-1]) / 1000 + 0.001)
    assert hparams_of(experiment / "trial_e_00000")["raysl/best_knn_top1"] == pytest.approx(0.55)
    assert hparams_of(experiment / "trial_e_00002")["raysl/epochs"] == 1
    assert "raysl/best_knn_top1" not in hparams_of(experiment / "trial_e_00003")  # nothing measured: no value
    build_report(str(experiment), log=lambda line: None)  # again (raysl report): one hparams file per trial, replaced
    assert [path.name for path in (experiment / "trial_e_00002").glob("events.out.tfevents*")] == [HPARAMS_FILE]


@pytest.mark.parametrize("ended, missing", [
    ("finished", "not started (stopped by the time budget)"),  # the budget ended it before Tune made the last trial
    ("interrupted", "not started (interrupted)"),
    (None, "not started"),  # live, or its driver killed
])
def test_every_trial_of_the_search_space_is_on_the_leaderboard_even_one_tune_never_created(tmp_path, ended, missing):
    """The quickstart's 6-point grid, its time budget over before Tune created the 6th trial: Tune's state and
    directories hold 5 trials; the leaderboard lists all 6, the 6th with its grid values and not started."""
    sweep = sweep_dict({"method.temperature": [0.1, 0.2, 0.5], "optimizer.lr": [0.003, 0.006]})
    sweep.update(scheduler={"name": "asha", "grace_period": 1}, time_budget_minutes=13.5)
    assert SweepConfig.model_validate(sweep).trial_count == 6
    points = [(0.1, 0.003), (0.2, 0.003), (0.5, 0.003), (0.1, 0.006), (0.2, 0.006)]  # the first key varies fastest
    experiment = write_experiment(tmp_path / "quick", sweep, [
        {"id": f"q_0000{index}", "params": {"method.temperature": temperature, "optimizer.lr": lr},
         "rows": epoch_rows(f"q_0000{index}", [0.5 + index / 100] * (3 if index < 2 else 1))}
        for index, (temperature, lr) in enumerate(points)
    ])
    if ended:
        (experiment / ENDING_FILE).write_text(json.dumps({"ended": ended}))
    (experiment / ASHA_STOPS).write_text(json.dumps({"q_00002": 1}))
    build_report(str(experiment), log=lambda line: None)
    rows = read_csv(experiment / "leaderboard.csv")
    assert len(rows) == 6
    (never,) = [row for row in rows if not row["trial"].startswith("q_")]
    assert (never["method.temperature"], never["optimizer.lr"]) == ("0.5", "0.006")
    assert never["status"] == missing and never["knn_top1"] == "" and never["epochs"] == "0"
    assert rows[-1] == never  # unscored: last
    assert "Trials: 6 (" in (experiment / "leaderboard.md").read_text()
    assert not list(experiment.glob(f"*{never['trial']}*"))  # no directory made for it (hparams: real trials only)
