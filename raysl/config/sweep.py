"""SweepConfig: a search space of dotted keys into a run config, its scheduler and search; the checks that every
value a search can draw validates, and the run config of one trial.

Imports raysl.config's run, overrides and section modules.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from typing import Annotated, Any, Literal, Union

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from raysl.config.base import Positive, Schema
from raysl.config.overrides import field_paths, lookup, set_dotted, validation_message
from raysl.config.run import RunConfig
from raysl.errors import UserError


class SearchDistribution(Schema):
    """Exactly one of: choice / grid (lists of values), uniform / loguniform [low, high],
    randint [low, high) and qrandint [low, high, q] (high inclusive, as in Ray Tune)."""

    choice: list[Any] | None = Field(default=None, min_length=1)
    """Draw one of these values at random."""
    grid: list[Any] | None = Field(default=None, min_length=1)
    """Every one of these values (a grid: every combination with the other grid keys)."""
    uniform: tuple[float, float] | None = None
    """A float drawn uniformly from [low, high]."""
    loguniform: tuple[Positive, Positive] | None = None
    """A float drawn log-uniformly from [low, high]."""
    randint: tuple[int, int] | None = None
    """An int drawn from [low, high) (high exclusive)."""
    qrandint: tuple[int, int, Annotated[int, Field(ge=1)]] | None = None
    """An int drawn from the multiples of q in [low, high] (high inclusive, except with q = 1, where Ray Tune
    excludes it as randint does)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchDistribution:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of choice, grid, uniform, loguniform, randint, qrandint"
                + (f" (got {', '.join(given)})" if given else "")
            )
        kind = given[0]
        bounds = getattr(self, kind)
        if kind in ("uniform", "loguniform", "qrandint") and bounds[0] > bounds[1]:
            raise ValueError(f"{kind}: low {bounds[0]} exceeds high {bounds[1]}")
        if kind == "randint" and bounds[0] >= bounds[1]:
            raise ValueError(f"randint: low {bounds[0]} must be below high {bounds[1]} (high is exclusive)")
        return self

    @property
    def kind(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)

    def values_to_check(self) -> list[Any]:
        """Every value a search can draw (choice, grid) or its extremes (ranges)."""
        kind, args = self.kind, getattr(self, self.kind)
        if kind in ("choice", "grid"):
            return list(args)
        if kind == "randint":
            return [args[0], args[1] - 1]
        if kind == "qrandint":
            low = math.ceil(args[0] / args[2]) * args[2]
            high = math.floor(args[1] / args[2]) * args[2]
            return [low, high]
        return [args[0], args[1]]


class ASHAConfig(Schema):
    name: Literal["asha"] = "asha"
    max_t: Annotated[int, Field(ge=1)] | None = None
    """Most epochs a trial runs (None: base.epochs)."""
    grace_period: Annotated[int, Field(ge=1)] = 1
    """Epochs every trial runs before ASHA may stop it."""
    reduction_factor: Annotated[float, Field(gt=1.0)] = 2.0
    """ASHA keeps about 1 / reduction_factor of the trials at each rung."""


class FIFOConfig(Schema):
    name: Literal["fifo"] = "fifo"


# What Population Based Training may change in a running trial: values the loop takes from the config when it
# restarts from a checkpoint (the optimiser's lr and weight decay are set again, the method's attributes are
# built from the config). Not: shapes stored in the checkpoint (queue_size, widths) or the data pipeline.
PBT_MUTABLE = ("optimizer.lr", "optimizer.weight_decay", "method.temperature", "method.momentum", "method.ll_weight")


class PBTConfig(Schema):
    """Population Based Training (Ray Tune's): every `perturbation_interval` epochs a trial in the bottom
    `quantile_fraction` copies a top trial's checkpoint (exploit) and perturbs the `mutate` values (explore: x0.8
    or x1.2, or resampled; kept inside the search's ranges), taking effect from its next epoch."""

    name: Literal["pbt"] = "pbt"
    perturbation_interval: Annotated[int, Field(ge=1)] = 1
    """Epochs between a trial's exploit / explore decisions."""
    burn_in: Annotated[int, Field(ge=0)] = 0
    """Epochs before the first decision."""
    quantile_fraction: Annotated[float, Field(gt=0.0, le=0.5)] = 0.25
    """The share of trials at the bottom that copy one of the same share at the top."""
    resample_probability: Annotated[float, Field(ge=0.0, le=1.0)] = 0.25
    """The chance a perturbed value is drawn again from its search distribution instead of scaled."""
    mutate: list[str] | None = None
    """The search keys PBT changes in running trials (None: every searched key it can change: optimizer.lr,
    optimizer.weight_decay, method.temperature, method.momentum, method.ll_weight)."""


SchedulerConfig = Annotated[Union[ASHAConfig, FIFOConfig, PBTConfig], Field(discriminator="name")]


# What a trial reports every epoch that a sweep can optimise (raysl.training.loop and the monitor), besides the
# per-set monitor figures knn_top1/<dataset>:<label set> and, after the last epoch only, the final evaluation's
# eval/<dataset>:<label set>/<budget>/<knn_top1|knn_top5|probe_top1|probe_top5>.
EPOCH_METRICS = {"knn_top1": "max", "loss": "min", "images_per_s": "max", "embedding_std": "max"}
FINAL_METRIC = re.compile(r"eval/[^/]+:[^/]+/[^/]+/(knn_top1|knn_top5|probe_top1|probe_top5)")


# The CPUs a trial's driver reserves: it only builds and watches a TorchTrainer; Tune rejects a zero-CPU trial.
DRIVER_CPUS = 0.1


# Fields that set where and how a run executes, not what it learns: never searched.
NOT_SEARCHABLE = ("resources", "storage_path", "name", "checkpoints_to_keep", "max_failures")


class SweepConfig(Schema):
    base: RunConfig = Field(default_factory=RunConfig)
    """The run config every trial starts from; `search` sets some of its keys per trial."""
    search: dict[str, SearchDistribution] = Field(default_factory=dict)
    """Dotted run-config keys (without `base.`) to the distribution each trial draws from."""
    scheduler: SchedulerConfig = Field(default_factory=ASHAConfig)
    """ASHA early stopping on `metric` (the kNN monitor's `knn_top1`), or fifo (every trial runs to the end)."""
    metric: str = "knn_top1"
    """What the sweep optimises, in one place: the scheduler's and the search's metric, the leaderboard's order
    and `best_config.yaml`'s trial. `knn_top1` (the kNN monitor), another figure every epoch reports (`loss`,
    `images_per_s`, `embedding_std`, `knn_top1/<dataset>:<label set>`), or a final evaluation's figure
    (`eval/<dataset>:<label set>/<budget>/probe_top1`, ...: reported after the last epoch only, so with
    scheduler fifo and `base.evaluation.final`). A trial scores its best value over the epochs."""
    mode: Literal["max", "min"] | None = None
    """Whether a higher or a lower `metric` is better (None: min for `loss`, else max)."""
    search_alg: Literal["random", "grid", "optuna"] = "random"
    """How trials' values are drawn: random (Ray Tune's variant generator: every combination of the grid keys,
    the other keys drawn at random, num_samples times), grid (every key a grid: the full product), or optuna
    (Optuna's TPE through Ray Tune's OptunaSearch, learning from finished trials; num_samples trials; choice and
    ranges, no grid)."""
    search_seed: int | None = None
    """Seed of the random draws (random) or of Optuna's sampler: the same seed draws the same values. None: fresh."""
    optuna_startup_trials: Annotated[int, Field(ge=1)] | None = None
    """search_alg optuna: how many trials TPE draws at random before its model of the finished trials draws the
    rest (Optuna's n_startup_trials). None: a quarter of num_samples, at least 2 and at most Optuna's default 10
    (with Optuna's own 10, a sweep of 10 trials or fewer would be random search)."""
    num_samples: Annotated[int, Field(ge=1)] = 1
    """Samples of the search space (each grid point is repeated num_samples times, as in Ray Tune)."""
    max_concurrent_trials: Annotated[int, Field(ge=1)] = 2
    """At most this many trials run at the same time."""
    time_budget_minutes: Annotated[float, Field(gt=0)] | None = None
    """Stop every trial still running after this long (wall clock); the leaderboard keeps what they reached."""
    trial_retries: Annotated[int, Field(ge=0)] = 1
    """Times Tune restarts a trial whose driver died (its node lost); it resumes from its last checkpoint. A trial
    running its loop itself (resources.trial_loop auto) also gets base.max_failures more (Ray Train's restarts)."""
    storage_path: str = "./results"
    """Where the experiment goes (`<storage_path>/<name>`): a local path or an s3:// / gs:// URI; under `ray job
    submit`, use object storage or a shared absolute path."""
    name: str = "sweep"
    """The experiment's directory under `storage_path`; when that exists, a new sweep takes `<name>_2`,
    `<name>_3`, ... and `--resume` the newest of them."""
    _notes: list[str] = PrivateAttr(default_factory=list)
    """Notes (allowed but worth a log line) of the base and of every value the search can draw."""

    @property
    def notes(self) -> list[str]:
        return self._notes or self.base.notes()

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if isinstance(self.scheduler, ASHAConfig):
            max_t = self.scheduler.max_t or self.base.epochs
            if self.scheduler.grace_period > max_t:
                raise ValueError(f"scheduler.grace_period {self.scheduler.grace_period} exceeds max_t {max_t}")
        final = FINAL_METRIC.fullmatch(self.metric)
        if self.metric not in EPOCH_METRICS and not final and not self.metric.startswith("knn_top1/"):
            close = difflib.get_close_matches(self.metric, list(EPOCH_METRICS), n=1)
            raise ValueError(f"metric {self.metric!r}: not a figure trials report; use one of {', '.join(EPOCH_METRICS)}, "
                             "knn_top1/<dataset>:<label set> or eval/<dataset>:<label set>/<budget>/<knn_top1|probe_top1|...>"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))
        if isinstance(self.scheduler, PBTConfig):
            self._check_pbt(self.scheduler)
        if final and isinstance(self.scheduler, (ASHAConfig, PBTConfig)):
            raise ValueError(f"metric {self.metric}: the final evaluation reports it after the last epoch only, but "
                             f"{self.scheduler.name} compares trials while they run; use scheduler: {{name: fifo}} "
                             "(or metric knn_top1)")
        if final and not self.base.evaluation.final:
            raise ValueError(f"metric {self.metric}: a final evaluation figure, but base.evaluation.final is false")
        kinds = {key: distribution.kind for key, distribution in self.search.items()}
        if self.search_alg == "grid" and (ranges := [key for key, kind in kinds.items() if kind != "grid"]):
            raise ValueError(f"search_alg grid: search.{ranges[0]} is a {kinds[ranges[0]]}; a grid search takes grid "
                             "values for every key (or use search_alg random)")
        if self.search_alg == "optuna":
            if grids := [key for key, kind in kinds.items() if kind == "grid"]:
                raise ValueError(f"search_alg optuna: search.{grids[0]} is a grid; Optuna draws from distributions: "
                                 "give it as choice (or use search_alg random)")
            if not self.search:
                raise ValueError("search_alg optuna: search is empty; give Optuna keys to search")
        elif self.optuna_startup_trials is not None:
            raise ValueError(f"optuna_startup_trials: only for search_alg optuna (this sweep's is {self.search_alg})")
        return self

    @property
    def startup_trials(self) -> int:
        """search_alg optuna: the trials TPE draws at random first (optuna_startup_trials, or its default)."""
        return self.optuna_startup_trials or min(10, max(2, self.num_samples // 4))

    def _check_pbt(self, pbt: PBTConfig) -> None:
        mutate = self.pbt_keys
        for key in pbt.mutate or []:
            if key not in self.search:
                raise ValueError(f"scheduler.mutate: {key} is not searched; PBT perturbs searched keys (add search.{key})")
            if key not in PBT_MUTABLE:
                raise ValueError(f"scheduler.mutate: {key} cannot change in a running trial (its state is in the "
                                 f"checkpoint, or the data pipeline is built from it); PBT can change {', '.join(PBT_MUTABLE)}")
        if not mutate:
            raise ValueError(f"scheduler pbt: nothing to perturb; search one of {', '.join(PBT_MUTABLE)}")
        if not self.in_trial:
            raise ValueError("scheduler pbt: exploit copies a trial's checkpoint through Tune, which needs each trial's "
                             "loop in the trial (base.resources: workers 1, trial_loop auto, no train_on)")
        if self.search_alg == "optuna":
            raise ValueError("scheduler pbt: with search_alg optuna the values change under Optuna's model; use random")

    @property
    def pbt_keys(self) -> list[str]:
        """The searched keys PBT perturbs (scheduler pbt: mutate, else every searched key it can change)."""
        if not isinstance(self.scheduler, PBTConfig):
            return []
        return list(self.scheduler.mutate) if self.scheduler.mutate else [key for key in self.search if key in PBT_MUTABLE]

    @property
    def in_trial(self) -> bool:
        """Whether each trial runs its loop itself (one worker, resources.trial_loop auto, no train_on labels: a
        Tune trial cannot be placed by node labels), without a driver."""
        resources = self.base.resources
        return resources.workers == 1 and resources.trial_loop == "auto" and not resources.train_on

    @property
    def trial_resources(self) -> tuple[float, float]:
        """(CPUs, GPUs) one running trial reserves: its driver (none when it runs the loop itself), its Train
        workers and its augmentation actors."""
        resources = self.base.resources
        cpus = (0.0 if self.in_trial else DRIVER_CPUS) + resources.workers * resources.cpus_per_worker
        return cpus + resources.data_actors * resources.data_cpus, resources.workers * resources.gpus_per_worker

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        return self.mode or EPOCH_METRICS.get(self.metric, "max")

    @property
    def trial_count(self) -> int:
        """Trials Tune will run: the grid's points times num_samples (Optuna: num_samples)."""
        if self.search_alg == "optuna":
            return self.num_samples
        return math.prod(len(d.grid) for d in self.search.values() if d.grid is not None) * self.num_samples

    @property
    def max_epochs(self) -> int:
        if isinstance(self.scheduler, ASHAConfig) and self.scheduler.max_t:
            return min(self.scheduler.max_t, self.base.epochs)
        return self.base.epochs


MAX_COMBINATIONS = 4096


def rung_notes(sweep: SweepConfig) -> list[str]:
    """A note when ASHA's rungs (grace_period x reduction_factor^k up to the last epoch) fall on epochs where the
    kNN monitor does not run (evaluation.every > 1): there ASHA compares the last measured figure (or NaN)."""
    every = sweep.base.evaluation.every
    if not isinstance(sweep.scheduler, ASHAConfig) or every == 1 or "evaluation.every" in sweep.search:
        return []
    last, rungs, rung = sweep.max_epochs, [], float(sweep.scheduler.grace_period)
    while rung < last:
        rungs.append(int(rung))
        rung *= sweep.scheduler.reduction_factor
    off = [rung for rung in rungs if rung % every]
    if not off:
        return []
    return [f"note: ASHA decides at epochs {', '.join(map(str, rungs))}, but evaluation.every {every} measures kNN at "
            f"epochs {every}, {2 * every}, ...: at {', '.join(map(str, off))} ASHA compares an older figure (NaN before "
            f"the first); make scheduler.grace_period a multiple of {every} with an integer reduction_factor"]


def check_search_space(sweep: SweepConfig, source: str) -> list[str]:
    """Every search key must name a run-config field, and every value the search can draw must validate.

    Values are checked per key and, where the product is small, in every combination of the keys'
    values / extremes (so cross-field rules see the values together). Returns the notes (RunConfig.notes)
    of the base and of those values, each with the values that raise it.
    """
    base_notes = sweep.base.notes()
    drawn_notes: dict[str, list[str]] = {}  # note -> the drawn values that raise it
    base = sweep.base.model_dump(mode="json")
    known = set(field_paths(base))
    for key in sweep.search:
        field = f"search.{key}"
        if key.split(".")[0] in NOT_SEARCHABLE:
            raise UserError(f"{source}: {field}: '{key}' sets where a run executes, not what it learns; it cannot be searched")
        if key not in known:
            hint = difflib.get_close_matches(key, sorted(known), n=1)
            suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise UserError(f"{source}: {field}: names no config field{suggestion}")
        if isinstance(lookup(base, key), (dict, list)) and sweep.search[key].kind not in ("choice", "grid"):
            raise UserError(f"{source}: {field}: is a section, not a number; search it with choice or grid")

    def check(assignment: dict[str, Any]) -> None:
        data = copy.deepcopy(base)
        for key, value in assignment.items():
            set_dotted(data, key, value, source=f"search.{key}")
        drawn = ", ".join(f"{key}={value!r}" for key, value in assignment.items())
        try:
            run = RunConfig.model_validate(data)
        except ValidationError as error:
            keys = ", ".join(f"search.{key}" for key in assignment)
            raise UserError(
                f"{source}: {keys}: the search can draw {drawn}, which the schema rejects:\n"
                f"{validation_message(error, prefix='base')}"
            ) from None
        for note in run.notes():
            if note not in base_notes:
                drawn_notes.setdefault(note, []).append(drawn)

    candidates = {key: distribution.values_to_check() for key, distribution in sweep.search.items()}
    for key, values in candidates.items():
        for value in values:
            check({key: value})
    if len(candidates) > 1 and math.prod(len(values) for values in candidates.values()) <= MAX_COMBINATIONS:
        for combination in itertools.product(*candidates.values()):
            check(dict(zip(candidates, combination)))
    return base_notes + [
        f"{note} [the search can draw it, e.g. {draws[-1]}" + (f"; {len(draws)} checked draws do]" if len(draws) > 1 else "]")
        for note, draws in drawn_notes.items()
    ]


def apply_assignment(run: RunConfig, assignment: dict[str, Any]) -> RunConfig:
    """The run config of one trial: the base with the trial's drawn values set."""
    data = run.model_dump(mode="json")
    for key, value in assignment.items():
        set_dotted(data, key, value, source=f"search.{key}")
    return RunConfig.model_validate(data)
