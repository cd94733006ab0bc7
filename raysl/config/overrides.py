"""Dotted keys into nested config data (`--set a.b.c=value`, search keys) and validation messages that name the
field a problem is in.

Imports raysl.config.model (method names in locations) and raysl.errors.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import ValidationError

from raysl.config.model import METHOD_CONFIGS
from raysl.errors import UserError


def _format_location(location: tuple[Any, ...]) -> str:
    # pydantic puts union member tags into locations: a scheduler's ('asha') helps, so it stays; a
    # method's repeats method.name and is dropped (method.temperature, not method.simclr.temperature).
    parts = [str(part) for index, part in enumerate(location)
             if not (index and location[index - 1] == "method" and part in METHOD_CONFIGS)]
    return ".".join(parts)


def validation_message(error: ValidationError, prefix: str = "") -> str:
    lines = []
    for item in error.errors():
        field = _format_location(item["loc"])
        if prefix:
            field = f"{prefix}.{field}" if item["loc"] else prefix
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        if item["type"] == "union_tag_invalid":  # e.g. method.name: an unknown method
            field = f"{field}.{item['ctx']['discriminator'].strip(chr(39))}" if "'" in item["ctx"]["discriminator"] else f"{field}.name"
            message = f"unknown {item['ctx']['tag']!r}; choose one of {item['ctx']['expected_tags']}"
        # Cross-field rules (no location) name their fields in the message.
        lines.append(f"  {field}: {message}" if field else f"  {message}")
    return "\n".join(lines)


def set_dotted(data: dict[str, Any], key: str, value: Any, *, source: str = "--set") -> None:
    """Set `a.b.c` (list items by index: `views.crops.0.size`) in nested dicts, creating mappings."""
    parts = key.split(".")
    if not key or any(part == "" for part in parts):
        raise UserError(f"{source}: '{key}' is not a dotted key")
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"{source}: {where}: no list item {part}")
            node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise UserError(f"{source}: {where}: cannot set a field inside a {type(node).__name__}")
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"{source}: {key}: no list item {last}")
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise UserError(f"{source}: {key}: cannot set a field inside a {type(node).__name__}")


def parse_overrides(overrides: list[str] | None) -> list[tuple[str, Any]]:
    """`key=value` strings (value parsed as YAML) into pairs."""
    pairs = []
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserError(f"--set {item}: expected dotted.key=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as error:
            raise UserError(f"--set {item}: the value is not valid YAML ({error})") from None
        pairs.append((key.strip(), value))
    return pairs


def field_paths(data: Any, prefix: str = "") -> list[str]:
    paths = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.append(path)
            paths.extend(field_paths(value, path))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            path = f"{prefix}.{index}"
            paths.append(path)
            paths.extend(field_paths(value, path))
    return paths


def lookup(data: Any, key: str) -> Any:
    for part in key.split("."):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data
