"""Search against search on one budget: random search + ASHA, Optuna (TPE) + ASHA and PBT, each a SimCLR sweep
over the same temperature and learning-rate ranges on Fashion-MNIST, one after the other on this machine, each
with the same time budget and trials-at-once. Prints best kNN top-1, trial-epochs trained and compute side by side.
    .venv/bin/python benchmarks/search_compare.py [--minutes 13] [--searches random,optuna,pbt,pbt2] [--smoke]
The sweeps are sweeps/simclr-pbt.yaml (pbt: as shipped, a population of 4 of up to 4 epochs, with the budget;
pbt2: a population of 2, as many as run at once, of up to 6 epochs) and its twins with `search_alg: random |
optuna` and the quickstart's ASHA (8 trials of up to 4 epochs); results under ./results/search-compare-*. One
seed each (search_seed 0): a difference of a few tenths of a point between searches is within the spread of reruns.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import raysl
from raysl.report.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]
ASHA = "scheduler={name: asha, grace_period: 1, reduction_factor: 2}"


def overrides(search: str, args) -> list[str]:
    common = [f"time_budget_minutes={args.minutes}", f"name=search-compare-{search}", "storage_path=./results",
              "search_seed=0", "max_concurrent_trials=2"]
    if search == "pbt":
        return common  # the shipped file: a population of 4, perturbed after every epoch
    if search == "pbt2":  # a population that fits the trials at once, with longer trials to fill the budget
        return [*common, "num_samples=2", "base.epochs=6", "scheduler.quantile_fraction=0.5"]
    return [*common, f"search_alg={search}", ASHA, f"num_samples={args.samples}"]


def trained_epochs(trial_dir: Path) -> int:
    """Epoch reports the trial made (its result.json lines): a PBT trial that copied a donor's checkpoint reports
    epochs it trained, not the donor's, so this is the compute it used, where the last epoch number is not."""
    path = trial_dir / "result.json"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=13.0, help="time_budget_minutes of every sweep")
    parser.add_argument("--samples", type=int, default=8, help="num_samples of the random and Optuna sweeps")
    parser.add_argument("--searches", default="random,optuna,pbt,pbt2")
    parser.add_argument("--smoke", action="store_true", help="a few hundred images, one epoch (checks the script)")
    args = parser.parse_args()
    sweep_file = ROOT / "sweeps" / "simclr-pbt.yaml"
    lines = []
    for search in args.searches.split(","):
        started = time.perf_counter()
        result = raysl.sweep(str(sweep_file), overrides(search, args), smoke=args.smoke, log=lambda line: None)
        wall = time.perf_counter() - started
        experiment = load_experiment(result.experiment_dir)
        epochs = {trial.trial_id: trained_epochs(Path(result.experiment_dir, trial.directory))
                  for trial in experiment.trials}
        board = result.leaderboard
        best = board.iloc[0] if len(board) else None
        lines.append({
            "search": search, "wall_s": round(wall, 1), "trials": len(board),
            "started": int(sum(1 for count in epochs.values() if count)),
            "trial_epochs": sum(epochs.values()),
            "best_knn": None if best is None else best["knn_top1"],
            "best_values": None if best is None else {key: best[key] for key in experiment.search_keys if key in board},
            "cpu_hours": round(float(board["cpu_seconds"].fillna(0).sum()) / 3600, 2) if len(board) else 0.0,
            "experiment": result.experiment_dir,
        })
        print(json.dumps(lines[-1]), flush=True)
    print(f"\nSimCLR on Fashion-MNIST, {args.minutes:g}-minute budget each, 2 trials at a time, one seed (search_seed 0)")
    print(f"{'search':<8} {'wall s':>7} {'trials':>6} {'started':>7} {'trial-epochs':>12} {'best kNN':>9} {'CPU-h':>6}  best values")
    for line in lines:
        knn = "–" if line["best_knn"] is None else f"{line['best_knn']:.4f}"
        values = ", ".join(f"{key.split('.')[-1]} {value:.3g}" for key, value in (line["best_values"] or {}).items())
        print(f"{line['search']:<8} {line['wall_s']:>7.1f} {line['trials']:>6} {line['started']:>7} "
              f"{line['trial_epochs']:>12} {knn:>9} {line['cpu_hours']:>6.2f}  {values}")


if __name__ == "__main__":
    main()
