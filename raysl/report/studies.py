"""The study sweeps' plots: quantity (kNN against the amount of data), quality (against a corruption's severity),
granularity (kNN per label set) and domain (in-domain, pooled, other-domain).

Imports raysl.report.experiment and raysl.report.plots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
from raysl.report.experiment import EVAL_ALL, METRIC, SET_PREFIX, Experiment, Trial, finite
from raysl.report.plots import config_label, legend, new_figure, png


def _method(experiment: Experiment, trial: Trial) -> str | None:
    if "method.name" in trial.params:
        return str(trial.params["method.name"])
    return experiment.sweep.base.method.name if experiment.sweep is not None else None


def _study_lines(experiment: Experiment, x_key: str) -> dict[str, dict[float, list[float]]]:
    """Completed trials' final knn_top1 by line (the method, then the other swept values but seeds) and x."""
    lines: dict[str, dict[float, list[float]]] = {}
    exclude = [x_key, "method.name"] + [key for key in experiment.search_keys if key.rsplit(".", 1)[-1] == "seed"]
    for trial in experiment.trials:
        x, y = finite(trial.params.get(x_key)), trial.final
        if trial.status != "completed" or x is None or y is None:
            continue
        parts = [_method(experiment, trial), config_label(experiment, trial.params, exclude)]
        label = ", ".join(part for part in parts if part) or "all trials"
        lines.setdefault(label, {}).setdefault(x, []).append(y)
    return lines


def _draw_lines(axes: Axes, lines: dict[str, dict[float, list[float]]]) -> None:
    """One line per entry: the mean per x, with min-max error bars where trials repeat."""
    for label, points in lines.items():
        xs = sorted(points)
        means = [sum(points[x]) / len(points[x]) for x in xs]
        low = [mean - min(points[x]) for mean, x in zip(means, xs)]
        high = [max(points[x]) - mean for mean, x in zip(means, xs)]
        axes.errorbar(xs, means, yerr=[low, high] if any(low) or any(high) else None, marker="o", capsize=3, label=label)
    axes.grid(alpha=0.3)


def plot_study_quantity(experiment: Experiment) -> bytes | None:
    """Final kNN top-1 against the pretraining set's size (data.subset.count or .fraction), per method."""
    key = next((key for key in ("data.subset.count", "data.subset.fraction") if key in experiment.search_keys), None)
    lines = _study_lines(experiment, key) if key else {}
    if not lines:
        return None
    figure, (axes,) = new_figure()
    _draw_lines(axes, lines)
    axes.set_xscale("log")
    xlabel = "pretraining images (data.subset.count)" if key.endswith("count") else "pretraining set size (data.subset.fraction of the train split)"
    axes.set(xlabel=xlabel, ylabel=f"final {METRIC}", title=f"{experiment.name}: data quantity")
    legend(figure, axes, len(lines))
    return png(figure)


def plot_study_quality(experiment: Experiment) -> bytes | None:
    """One panel per swept data.corruption.* key: final kNN top-1 against its value, per method."""
    panels = [(key, lines) for key in experiment.search_keys
              if key.startswith("data.corruption.") and key != "data.corruption.seed" and (lines := _study_lines(experiment, key))]
    if not panels:
        return None
    figure, axes_list = new_figure(4.0 * len(panels) + 1.5, 4.2, len(panels))
    for axes, (key, lines) in zip(axes_list, panels):
        _draw_lines(axes, lines)
        axes.set(xlabel=key.removeprefix("data.corruption."), title=key)
        axes.legend(loc="best", fontsize="small" if len(lines) <= 6 else "x-small")  # each panel's own lines
    axes_list[0].set_ylabel(f"final {METRIC}")
    figure.suptitle(f"{experiment.name}: data quality (pretraining corruptions)")
    return png(figure)


def _set_scores(experiment: Experiment, trial: Trial, metric: str) -> dict[str, float]:
    """Final scores per evaluation set: the final evaluation's `all` budget, else (kNN top-1) the last monitor value."""
    scores: dict[str, float] = {}
    if metric == METRIC:
        if (value := trial.final) is not None:
            scores[experiment.main_set or "main"] = value
        for key in dict.fromkeys(key for row in trial.rows for key in row if key.startswith(SET_PREFIX)):
            if (value := finite(trial.latest(key))) is not None:
                scores[key.removeprefix(SET_PREFIX)] = value
    for key, raw in trial.last.items():
        found = EVAL_ALL.fullmatch(key)
        if found and found[2] == metric and (value := finite(raw)) is not None:
            scores[found[1]] = value
    return scores


def _bar_groups(experiment: Experiment, metric: str, keep: Callable[[str], bool]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """(evaluation sets, config label -> set -> mean score) over completed trials, for the sets `keep` accepts."""
    sums: dict[str, dict[str, list[float]]] = {}
    for trial in experiment.trials:
        if trial.status != "completed":
            continue
        label = config_label(experiment, trial.params) or trial.trial_id
        for name, value in _set_scores(experiment, trial, metric).items():
            if keep(name):
                sums.setdefault(label, {}).setdefault(name, []).append(value)
    sets = list(dict.fromkeys(name for scores in sums.values() for name in scores))
    main = experiment.main_set or "main"
    sets.sort(key=lambda name: name != main)
    return sets, {label: {name: sum(v) / len(v) for name, v in scores.items()} for label, scores in sums.items()}


def _draw_bars(axes: Axes, sets: list[str], groups: dict[str, dict[str, float]], ylabel: str) -> None:
    width = 0.8 / max(len(groups), 1)
    for index, (label, scores) in enumerate(groups.items()):
        offsets = [(position - 0.4 + width * (index + 0.5), scores[name]) for position, name in enumerate(sets) if name in scores]
        axes.bar(*zip(*offsets), width=width, label=label)
    axes.set_xticks(range(len(sets)), sets, rotation=15 if len(sets) > 3 else 0)
    axes.set(ylabel=ylabel, ylim=(0, 1))
    axes.grid(alpha=0.3, axis="y")


def plot_study_granularity(experiment: Experiment) -> bytes | None:
    """Grouped bars of final kNN top-1 (and probe top-1 when evaluated) per label set of the main dataset."""
    dataset = experiment.main_dataset
    if dataset is None:
        return None
    of_main = lambda name: name.split(":", 1)[0] == dataset  # noqa: E731
    sets, groups = _bar_groups(experiment, METRIC, of_main)
    if len(sets) < 2:
        return None
    probe_sets, probe_groups = _bar_groups(experiment, "probe_top1", of_main)
    panels = [(sets, groups, "final kNN top-1")] + ([(probe_sets, probe_groups, "final linear probe top-1")] if probe_sets else [])
    figure, axes_list = new_figure(4.5 * len(panels) + 2.5, 4.2, len(panels))
    for axes, (names, bars, ylabel) in zip(axes_list, panels):
        _draw_bars(axes, names, bars, ylabel)
        axes.set_xlabel("label set (coarser or finer labels of the same images)")
    figure.suptitle(f"{experiment.name}: task granularity ({dataset})")
    legend(figure, axes_list[-1], len(groups))
    return png(figure)


def plot_study_domain(experiment: Experiment) -> bytes | None:
    """Grouped bars of final kNN top-1 per evaluation dataset (the main one first)."""
    main, dataset = experiment.main_set or "main", experiment.main_dataset
    other = lambda name: name.endswith(":label") and name.split(":", 1)[0] != dataset  # noqa: E731
    sets, groups = _bar_groups(experiment, METRIC, lambda name: name == main or other(name))
    if not any(other(name) for name in sets):
        return None
    figure, (axes,) = new_figure(8.0 if len(groups) > 6 else 7.0)
    _draw_bars(axes, sets, groups, "final kNN top-1")
    axes.set_xticks(range(len(sets)), [name.split(":", 1)[0] for name in sets])
    axes.set(xlabel="evaluation dataset", title=f"{experiment.name}: domain (kNN per evaluation dataset)")
    legend(figure, axes, len(groups))
    return png(figure)
