"""An experiment's plots as PNG bytes (matplotlib, Agg): kNN per epoch, final figure against a searched key, PBT's
schedules; the figure helpers the study plots share.

Imports raysl.report.experiment.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
from raysl.report.experiment import METRIC, Experiment, Trial

DPI = 100


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _short_names(keys: list[str]) -> dict[str, str]:
    """Each key's last part (temperature for method.temperature), or the whole key where two would clash."""
    last = [key.rsplit(".", 1)[-1] for key in keys]
    return {key: short if last.count(short) == 1 else key for key, short in zip(keys, last)}


def config_label(experiment: Experiment, params: dict[str, Any], exclude: Iterable[str] = ()) -> str:
    names = _short_names(experiment.search_keys)
    skip = set(exclude)
    return ", ".join(f"{names[key]}={_value_text(params.get(key))}" for key in experiment.search_keys if key not in skip)


def _trial_label(experiment: Experiment, trial: Trial, limit: int = 48) -> str:
    tail = trial.trial_id.rsplit("_", 1)[-1]
    label = f"{tail if tail.isdigit() else trial.trial_id}: {config_label(experiment, trial.params)}".rstrip(": ")
    return label if len(label) <= limit else label[: limit - 1] + "…"


def new_figure(width: float = 7.0, height: float = 4.2, columns: int = 1, sharey: bool = True) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg, without pyplot (no global state, nothing to close)
    axes = figure.subplots(1, columns, squeeze=False, sharey=sharey)[0]
    return figure, list(axes)


def png(figure: Figure) -> bytes:
    """The figure as a 256-colour PNG (plots need no more; about 5x smaller than Agg's RGBA)."""
    from PIL import Image

    rendered = io.BytesIO()
    figure.savefig(rendered, format="png", dpi=DPI)
    image = Image.open(rendered).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def legend(figure: Figure, axes: Axes, count: int) -> None:
    if count:
        place = "outside right upper" if count > 6 else "best"
        (figure if count > 6 else axes).legend(loc=place, fontsize="small" if count <= 12 else "x-small")


def plot_knn_per_epoch(experiment: Experiment) -> bytes | None:
    """knn_top1 against epoch, one line per trial; an x where a trial stopped before the last epoch."""
    trials = [trial for trial in experiment.trials if trial.knn]
    if not trials:
        return None
    figure, (axes,) = new_figure(8.0 if len(trials) > 6 else 7.0)
    for index, trial in enumerate(trials):
        epochs, values = zip(*trial.knn)
        color, style = f"C{index % 10}", ("-", "--", ":", "-.")[index // 10 % 4]
        axes.plot(epochs, values, marker="o", markersize=3.5, color=color, linestyle=style, label=_trial_label(experiment, trial))
        if trial.epochs < experiment.max_epochs:
            axes.plot(epochs[-1], values[-1], marker="x", markersize=9, color=color, linestyle="none")
    axes.set(xlabel="epoch (x: a trial's last epoch, before the sweep's last)", ylabel=f"{METRIC} (kNN top-1)")
    figure.suptitle(f"{experiment.name}: kNN top-1 per epoch")
    axes.set_xlim(0.5, max(experiment.max_epochs, *(trial.epochs for trial in trials)) + 0.5)
    axes.xaxis.get_major_locator().set_params(integer=True, min_n_ticks=1)
    axes.grid(alpha=0.3)
    legend(figure, axes, len(trials))
    return png(figure)


def _positions(values: list[Any]) -> tuple[list[float], list[str] | None]:
    """x positions of parameter values: numbers as they are, anything else at category positions 0, 1, ..."""
    if all(_is_number(value) for value in values):
        return [float(value) for value in values], None
    categories = list(dict.fromkeys(_value_text(value) for value in values))
    return [float(categories.index(_value_text(value))) for value in values], categories


def _set_x_axis(axes: Axes, xs: list[float], categories: list[str] | None) -> None:
    """Category names at their positions; a log scale for positive numbers spanning a factor of 10 or more."""
    if categories is not None:
        axes.set_xticks(range(len(categories)), categories, rotation=30 if len(categories) > 4 else 0)
        axes.set_xlim(-0.5, len(categories) - 0.5)
    elif min(xs) > 0 and max(xs) / min(xs) >= 10:
        axes.set_xscale("log")


def plot_final_vs(experiment: Experiment, key: str) -> bytes | None:
    """Best knn_top1 of each scored trial against the key's value (filled: completed)."""
    scored = [trial for trial in experiment.trials if trial.best is not None and key in trial.params]
    if not scored:
        return None
    xs, categories = _positions([trial.params[key] for trial in scored])
    figure, (axes,) = new_figure()
    for completed, label in ((True, "completed"), (False, "not completed (best so far)")):
        points = [(x, trial.best) for x, trial in zip(xs, scored) if (trial.status == "completed") == completed]
        if points:
            axes.scatter(*zip(*points), s=40, label=label,
                         facecolors="C0" if completed else "none", edgecolors="C0" if completed else "C1")
    _set_x_axis(axes, xs, categories)
    axes.set(xlabel=key, ylabel=f"best {METRIC}", title=f"{experiment.name}: best kNN top-1 vs {key}")
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return png(figure)


def pbt_schedule(trial: Trial, key: str) -> list[tuple[int, Any]]:
    """(epoch, value) of a searched key as the trial ran each epoch (Tune writes each report's config; PBT
    changes the values of running trials)."""
    return [(int(row["epoch"]), value) for row in trial.rows
            if (value := ((row.get("config") or {}).get("search") or {}).get(key)) is not None]


def plot_pbt_schedules(experiment: Experiment) -> bytes | None:
    """Population Based Training: each perturbed key's value per epoch, one line per trial (a step where PBT's
    exploit gave the trial a better trial's checkpoint and new values)."""
    keys = experiment.sweep.pbt_keys if experiment.sweep is not None else []
    series = {key: [(trial, points) for trial in experiment.trials if (points := pbt_schedule(trial, key))] for key in keys}
    if not any(series.values()):
        return None
    figure, axes_list = new_figure(4.2 * len(keys) + 1.0, 3.8, columns=len(keys), sharey=False)
    for axes, key in zip(axes_list, keys):
        for index, (trial, points) in enumerate(series[key]):
            epochs, values = zip(*points)
            axes.step(epochs, values, where="post", marker="o", markersize=3, color=f"C{index % 10}",
                      label=_trial_label(experiment, trial))
        if all(_is_number(value) and value > 0 for _, points in series[key] for _, value in points):
            axes.set_yscale("log")
        axes.set(xlabel="epoch", title=key)
        axes.grid(alpha=0.3)
    figure.suptitle(f"{experiment.name}: PBT's values per epoch (a step: exploit + explore)")
    legend(figure, axes_list[-1], len(experiment.trials))
    return png(figure)
