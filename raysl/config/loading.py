"""From a YAML file, a dict or a config object to a validated RunConfig / SweepConfig: `--set` overrides,
`--smoke`, keys saved by older versions.

Imports raysl.config's run, sweep, smoke and overrides modules and raysl.errors.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError

from raysl.config.overrides import parse_overrides, set_dotted, validation_message
from raysl.config.run import RunConfig
from raysl.config.smoke import Machine, fit_to_machine, smoke_run, smoke_search, smoke_sweep_data
from raysl.config.sweep import SweepConfig, check_search_space, rung_notes
from raysl.errors import UserError


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; every problem is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path}: the file is empty (expected a mapping of config fields)")
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of config fields, not a {type(data).__name__}")
    return data


def _apply_overrides(data: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in parse_overrides(overrides):
        set_dotted(data, key, value, source=f"--set {key}")
    return data


def config_data(source: str | os.PathLike | dict[str, Any] | BaseModel) -> dict[str, Any]:
    """A config's plain data from a YAML file's path, a dict (copied) or a config object (the Python API)."""
    if isinstance(source, BaseModel):
        return source.model_dump(mode="json")
    if isinstance(source, dict):
        return copy.deepcopy(source)
    return read_yaml(source)


def _name_of(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__} config>"


def load_run_config(source: str | os.PathLike | dict[str, Any] | BaseModel, overrides: list[str] | None = None,
                    smoke: bool = False, machine: Machine | None = None) -> RunConfig:
    """A validated run config (with --set overrides, --smoke) from a file, a dict or a RunConfig. With `smoke` and
    a `machine`, its resources and sizes are also fitted to that machine (run.smoke_note says how)."""
    path = _name_of(source)
    data = _apply_overrides(config_data(source), overrides)
    if smoke:
        data = smoke_run(data)
    try:
        run = RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{path}: invalid run config\n{validation_message(error)}") from None
    if smoke and machine is not None:
        run, note = _fitted(run, machine, 1, path)
        run._smoke_note = note
    return run


def _fitted(run: RunConfig, machine: Machine, trials_at_once: int, path: str) -> tuple[RunConfig, str | None]:
    try:
        return fit_to_machine(run, machine, trials_at_once)
    except ValidationError as error:
        raise UserError(f"{path}: --smoke cannot fit this config to {machine.name}\n{validation_message(error)}") from None


def load_sweep_config(source: str | os.PathLike | dict[str, Any] | BaseModel, overrides: list[str] | None = None,
                      smoke: bool = False, machine: Machine | None = None) -> SweepConfig:
    """A validated sweep config (with --set overrides, --smoke) from a file, a dict or a SweepConfig. With `smoke`
    and a `machine`, its base's resources and sizes are also fitted to that machine (said in the notes)."""
    path = _name_of(source)
    data = _apply_overrides(config_data(source), overrides)
    if smoke:
        data = smoke_sweep_data(data)
    try:
        sweep = SweepConfig.model_validate(data)
    except ValidationError as error:
        misplaced = [
            str(item["loc"][0]) for item in error.errors()
            if item["type"] == "extra_forbidden" and len(item["loc"]) == 1 and item["loc"][0] in RunConfig.model_fields
        ]
        hint = f"\n  ({', '.join(misplaced)}: run fields of a sweep go under base:, e.g. base.{misplaced[0]})" if misplaced else ""
        raise UserError(f"{path}: invalid sweep config\n{validation_message(error)}{hint}") from None
    if smoke and machine is not None:
        base, note = _fitted(sweep.base, machine, sweep.max_concurrent_trials or 1, path)
        sweep = sweep.model_copy(update={"base": base})
    notes = check_search_space(sweep, str(path)) + rung_notes(sweep)
    if smoke:
        sweep = smoke_search(sweep)
        if machine is not None and note:
            notes.insert(0, note)
    sweep._notes = notes
    return sweep


def legacy_stem(config: dict[str, Any]) -> dict[str, Any]:
    """A run config saved before model.stem existed (a checkpoint's): its resnet18 was always the CIFAR stem."""
    model = config.get("model")
    if isinstance(model, dict) and model.get("backbone") == "resnet18" and "stem" not in model:
        model["stem"] = "cifar"
    return config


def validated_run(data: dict[str, Any], heading: str) -> RunConfig:
    """RunConfig.model_validate(data); an invalid one is a UserError: `heading`, then a line per invalid field."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise UserError(f"{heading}\n{validation_message(error)}") from None


def dump_yaml(model: BaseModel) -> str:
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def detect_file_kind(data: dict[str, Any]) -> Literal["sweep", "run"]:
    """A sweep file has a `base` or `search` section; anything else is a run config."""
    return "sweep" if ("base" in data or "search" in data or "scheduler" in data) else "run"
