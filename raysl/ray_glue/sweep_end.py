"""What a sweep leaves when it ends: the leaderboard printed, the best trial's backbone exported to best_backbone/,
best_config.yaml with the values the best trial ended with.

Imports raysl.config, raysl.report and raysl.outputs.
"""

from __future__ import annotations

from typing import Any

from raysl.config import SweepConfig, apply_assignment, dump_yaml
from raysl.io.storage import is_remote, write_text
from raysl.report.experiment import trial_run_dir
from raysl.report.leaderboard import format_cell


def print_leaderboard(rows: list[dict[str, Any]], metric: str = "knn_top1", log=print) -> None:
    """The leaderboard's main columns in the log (trial, swept values, kNN, epochs, status, loss, img/s);
    leaderboard.csv / .md hold every column."""
    first = list(rows[0]) if rows else ["trial", "knn_top1", "status"]
    columns = first[: first.index("images_per_s") + 1] if "images_per_s" in first else first
    table = [columns] + [[format_cell(row.get(column)) for column in columns] for row in rows]
    widths = [max(len(line[index]) for line in table) for index in range(len(columns))]
    log(f"\nleaderboard (best {'kNN top-1' if metric == 'knn_top1' else metric} per trial):")
    for line in table:
        log("  " + "  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def export_best(trial: str, path: str, log=print) -> None:
    """The best trial's backbone exported to best_backbone/ beside best_config.yaml (local experiments; on object
    storage: `raysl export EXPERIMENT --out DIR` where it is needed)."""
    if is_remote(path):
        log(f"best backbone: raysl export {path} --out best_backbone")
        return
    from raysl.outputs.export import export_backbone

    try:
        export_backbone(trial_run_dir(path, trial), f"{path}/best_backbone", log=lambda text: None)
        log(f"best backbone: {path}/best_backbone (raysl.load_backbone)")
    except Exception as error:  # the sweep's results stand without it; raysl export can redo it
        log(f"note: exporting the best backbone failed ({type(error).__name__}: {error}); run raysl export {path}")


def write_best_config(best: dict[str, Any], params: dict[str, Any], sweep: SweepConfig, path: str, log=print) -> None:
    """best_config.yaml: the base run config with the best trial's drawn values, runnable with raysl train."""
    run = apply_assignment(sweep.base, params)
    run = run.model_copy(update={"name": f"{sweep.name}-best", "storage_path": sweep.storage_path})
    target = f"{path}/best_config.yaml"
    how = f"raysl train {target}" if not is_remote(target) else "copy it here, then raysl train best_config.yaml"
    header = f"# best trial {best['trial']} of sweep {path}: {sweep.metric} {best[sweep.metric]:.4g}\n# run it: {how}\n"
    write_text(target, header + dump_yaml(run))
    log(f"best config: {target}")
