"""`raysl report A B --out DIR`: several experiments in one table and one kNN plot.

Imports raysl.report's experiment, leaderboard and plots modules.
"""

from __future__ import annotations

from raysl.io.storage import write_bytes, write_text
from raysl.report.experiment import METRIC, SET_PREFIX, Experiment, load_experiment
from raysl.report.leaderboard import format_cell, leaderboard_csv, leaderboard_rows, markdown_cell
from raysl.report.plots import new_figure, png


def plot_comparison(experiments: list[Experiment]) -> bytes | None:
    """knn_top1 against epoch for every trial of every experiment, one colour per experiment (its best trial
    solid and thick, the others thin)."""
    if not any(trial.knn for experiment in experiments for trial in experiment.trials):
        return None
    figure, (axes,) = new_figure(8.0)
    for index, experiment in enumerate(experiments):
        trials = sorted((trial for trial in experiment.trials if trial.knn), key=lambda trial: -(trial.best or 0.0))
        for rank, trial in enumerate(trials):
            epochs, values = zip(*trial.knn)
            axes.plot(epochs, values, color=f"C{index % 10}", marker="o" if rank == 0 else None, markersize=3.5,
                      linewidth=2.2 if rank == 0 else 0.8, alpha=1.0 if rank == 0 else 0.45,
                      label=f"{experiment.name} (best {trial.best:.4f}, {len(trials)} trials)" if rank == 0 else None)
    axes.set(xlabel="epoch", ylabel=f"{METRIC} (kNN top-1)")
    figure.suptitle("kNN top-1 per epoch: " + " vs ".join(experiment.name for experiment in experiments))
    axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    return png(figure)


def build_comparison(experiment_dirs: list[str], out: str, log=print) -> list[str]:
    """Several experiments in one table (comparison.md / .csv: every trial, labelled by its experiment, best first
    by knn_top1) and one kNN-per-epoch plot (plots/comparison_knn_per_epoch.png), written under `out`."""
    experiments = [load_experiment(directory) for directory in experiment_dirs]
    names = [experiment.name for experiment in experiments]
    for experiment in experiments:  # the same name twice (results_a/moco, results_b/moco)
        if names.count(experiment.name) > 1:
            experiment.name = f"{experiment.name} ({experiment.uri})"
        for warning in experiment.warnings:
            log(warning)
    rows = [{"experiment": experiment.name, **row} for experiment in experiments for row in leaderboard_rows(experiment)]
    rows.sort(key=lambda row: (row[METRIC] is None, -(row[METRIC] or 0.0)))
    columns = list(dict.fromkeys(column for row in rows for column in row))
    rows = [{column: row.get(column) for column in columns} for row in rows]
    uri, written = out.rstrip("/"), []

    def write(relative: str, data: bytes | str) -> None:
        target = f"{uri}/{relative}"
        (write_text if isinstance(data, str) else write_bytes)(target, data)
        written.append(target)
        log(f"wrote {target}")

    write("comparison.csv", leaderboard_csv(rows))
    lines = [f"# Sweep comparison: {', '.join(experiment.name for experiment in experiments)}", ""]
    lines += [f"- {experiment.name}: {experiment.uri}, {len(experiment.trials)} trials, best knn_top1 "
              + format_cell(max((trial.best for trial in experiment.trials if trial.best is not None), default=None))
              + (f", compute {sum(row['cpu_seconds'] or 0.0 for row in rows if row['experiment'] == experiment.name) / 3600:.2f} CPU-hours")
              for experiment in experiments]
    shown = [column for column in columns if not column.startswith(("eval/", SET_PREFIX)) or "/all/" in column]
    lines += ["", "| " + " | ".join(shown) + " |", "|" + "|".join("---" for _ in shown) + "|"]
    lines += ["| " + " | ".join(markdown_cell(row.get(column)) for column in shown) + " |" for row in rows]
    png = plot_comparison(experiments)
    if png is not None:
        write("plots/comparison_knn_per_epoch.png", png)
        lines += ["", "![kNN top-1 per epoch](plots/comparison_knn_per_epoch.png)"]
    write("comparison.md", "\n".join(lines) + "\n")
    return written
