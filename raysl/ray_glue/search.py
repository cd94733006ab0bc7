"""How a sweep searches and stops trials: the search space in Tune's terms, the variant generator or Optuna,
ASHA (recording why it stopped each trial), FIFO and PBT (its explored values clipped to the search ranges).

Imports raysl.config.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from ray import tune

from raysl.config import ASHAConfig, PBTConfig, SweepConfig
from raysl.io.storage import read_text, write_text
from raysl.report.experiment import ASHA_STOPS


def to_tune(distribution) -> Any:
    kind, args = distribution.kind, getattr(distribution, distribution.kind)
    return {
        "choice": lambda: tune.choice(args),
        "grid": lambda: tune.grid_search(args),
        "uniform": lambda: tune.uniform(*args),
        "loguniform": lambda: tune.loguniform(*args),
        "randint": lambda: tune.randint(*args),
        "qrandint": lambda: tune.qrandint(*args),
    }[kind]()


class RecordingASHA(tune.schedulers.ASHAScheduler):
    """ASHA that notes the trials it stops early in the experiment directory (ASHA_STOPS): Tune marks a trial ASHA
    stopped and one the time budget cut alike (TERMINATED), and the leaderboard tells them apart by this."""

    def __init__(self, *, stops_file: str, **options):
        super().__init__(**options)
        self._stops_file = stops_file
        self._stops: dict[str, int] = {}

    def on_trial_result(self, tune_controller, trial, result):
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and result.get("epoch", 0) < self._max_t:
            self._stops[trial.trial_id] = int(result.get("epoch", 0))
            try:  # merged with what is there (a resumed sweep's earlier run); a failed write must not end the sweep
                recorded = json.loads(read_text(self._stops_file) or "{}")
                write_text(self._stops_file, json.dumps({**recorded, **self._stops}, indent=1, sort_keys=True) + "\n")
            except Exception as error:  # noqa: BLE001
                logging.getLogger(__name__).warning("could not record ASHA's stop of %s in %s: %s",
                                                    trial.trial_id, self._stops_file, error)
        return decision


class ClipToRanges:
    """PBT's explore step after its own: a value scaled by 0.8 / 1.2 is brought back into its search range (so
    every value a trial runs with is one the schema validated before Ray started)."""

    def __init__(self, ranges: dict[str, tuple[float, float]]):
        self.ranges = ranges

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        search = config.get("search", {})
        for key, (low, high) in self.ranges.items():
            if key in search:
                value = min(max(search[key], low), high)
                search[key] = type(search[key])(value) if isinstance(search[key], int) else value
        return config


def _pbt(sweep: SweepConfig) -> tune.schedulers.PopulationBasedTraining:
    mutations, ranges = {}, {}
    for key in sweep.pbt_keys:
        distribution = sweep.search[key]
        if distribution.kind in ("grid", "choice"):  # PBT shifts to a neighbouring value, or resamples
            mutations[key] = list(distribution.values_to_check())
        else:
            mutations[key] = to_tune(distribution)
            ranges[key] = tuple(distribution.values_to_check())
    pbt = sweep.scheduler
    return tune.schedulers.PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=pbt.perturbation_interval, burn_in_period=pbt.burn_in,
        hyperparam_mutations={"search": mutations}, quantile_fraction=pbt.quantile_fraction,
        resample_probability=pbt.resample_probability, custom_explore_fn=ClipToRanges(ranges),
    )


def build_scheduler(sweep: SweepConfig, path: str):
    if isinstance(sweep.scheduler, PBTConfig):
        return _pbt(sweep)
    if isinstance(sweep.scheduler, ASHAConfig):
        return RecordingASHA(
            stops_file=f"{path}/{ASHA_STOPS}",
            # The run's own epoch, not Tune's report count: that restarts at 1 when a sweep is resumed,
            # while the Train run continues from its checkpoint's epoch.
            time_attr="epoch",
            max_t=sweep.max_epochs,
            grace_period=sweep.scheduler.grace_period,
            reduction_factor=sweep.scheduler.reduction_factor,
        )
    return tune.schedulers.FIFOScheduler()


def build_search_alg(sweep: SweepConfig):
    """Ray Tune's variant generator (random and grid; seeded by search_seed; it limits the trials at once itself:
    Tune ignores TuneConfig.max_concurrent_trials for it), or Optuna's TPE (OptunaSearch with a TPESampler seeded
    by search_seed, its first startup_trials drawn at random; limited by TuneConfig.max_concurrent_trials). The
    metric and mode come from the TuneConfig."""
    if sweep.search_alg == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=sweep.search_seed,
                                                               n_startup_trials=sweep.startup_trials))
    return tune.search.BasicVariantGenerator(random_state=sweep.search_seed, max_concurrent=sweep.max_concurrent_trials)
