"""`raysl report DIR`: the leaderboard (leaderboard.csv, leaderboard.md), the plots (plots/*.png) and TensorBoard's
hparams written into an experiment directory.

Imports the other raysl.report modules.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from raysl.io.storage import exists, write_bytes, write_text
from raysl.report.experiment import load_experiment
from raysl.report.leaderboard import leaderboard_csv, leaderboard_markdown, leaderboard_rows
from raysl.report.plots import plot_final_vs, plot_knn_per_epoch, plot_pbt_schedules
from raysl.report.studies import plot_study_domain, plot_study_granularity, plot_study_quality, plot_study_quantity
from raysl.report.tensorboard import write_hparams


def _file_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", key)


def build_report(experiment_dir: str, *, log: Callable[[str], None] = print) -> list[str]:
    """Write leaderboard.csv, plots/*.png and leaderboard.md into the experiment directory; return their URIs."""
    experiment = load_experiment(experiment_dir)
    for warning in experiment.warnings:
        log(warning)
    uri, written = experiment.uri, []

    def write(relative: str, data: bytes | str) -> None:
        target = f"{uri}/{relative}"
        (write_text if isinstance(data, str) else write_bytes)(target, data)
        written.append(target)
        log(f"wrote {target}")

    rows = leaderboard_rows(experiment)
    write("leaderboard.csv", leaderboard_csv(rows))
    plots = [("knn_per_epoch", plot_knn_per_epoch(experiment))]
    plots += [(f"final_vs_{_file_name(key)}", plot_final_vs(experiment, key)) for key in experiment.search_keys]
    plots += [
        ("study_quantity", plot_study_quantity(experiment)),
        ("study_quality", plot_study_quality(experiment)),
        ("study_granularity", plot_study_granularity(experiment)),
        ("study_domain", plot_study_domain(experiment)),
        ("pbt_schedules", plot_pbt_schedules(experiment)),
    ]
    images = []
    for name, png in plots:
        if png is not None:
            write(f"plots/{name}.png", png)
            images.append(f"plots/{name}.png")
    if exists(f"{uri}/plots/corruption_samples.png"):  # written when a sweep with corruptions starts
        images.append("plots/corruption_samples.png")
    write("leaderboard.md", leaderboard_markdown(experiment, rows, images))
    return written + write_hparams(experiment, log)
