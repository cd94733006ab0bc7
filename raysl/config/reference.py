"""The configuration reference, generated from the schema so it cannot drift: `python -m raysl.config.reference`.

Writes docs/configuration-reference.md from the pydantic models of raysl/config/: the run config
(`RunConfig`, what `raysl train` takes and a sweep's `base`) and the sweep config (`SweepConfig`), every
nested section found by walking `model_fields`. Each field's dotted key, type (Literal choices, unions,
lists, nested sections linked; `Field` bounds such as ge / le), default and description. Descriptions are
the attribute docstrings of raysl/config/ (the string literal right under a field), which pydantic reads into
each field's description (`use_attribute_docstrings`). Sections are
described by their class docstrings. The output is deterministic (declaration order, no timestamps).

`python -m raysl.config.reference --check` writes nothing and exits 1 when the committed file differs from what
it would write (tests/test_docs.py runs the same comparison).
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Literal, Union

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from raysl import config

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "configuration-reference.md"
DOC_NAME = "docs/configuration-reference.md"
STALE = f"{DOC_NAME} is stale: run python -m raysl.config.reference"


# ----------------------------------------------------------------------------- markdown helpers


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - and _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def _escape(text: str) -> str:
    """Text for a table cell: pipes escaped everywhere (code spans too), `<` escaped outside code spans."""
    parts = text.split("`")
    for index in range(0, len(parts), 2):
        parts[index] = parts[index].replace("<", "&lt;")
    return "`".join(parts).replace("|", "\\|")


def _paragraph(doc: str | None) -> str:
    """A docstring as running text: dedented, its lines joined, paragraphs kept apart."""
    if not doc:
        return ""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(doc))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines() if line.strip()) for p in paragraphs)


def _number(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value)) if abs(value) >= 1 or value == 0 else repr(value)
        text = repr(value)
        return format(value, ".12f").rstrip("0") if "e" in text else text
    return str(value)


def _value(value: Any) -> str:
    """A default in YAML flow style (what a config file would say)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        text = repr(value)
        return format(value, ".12f").rstrip("0") if "e" in text else text
    if isinstance(value, (int, str)):
        return str(value) if value != "" else '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_value(item)}" for key, item in value.items()) + "}"
    return str(value)


# ----------------------------------------------------------------------------- docstrings from the source


def field_doc(cls: type[BaseModel], name: str, info: FieldInfo) -> str:
    """A field's description (the string under it in raysl/config/, which pydantic reads: use_attribute_docstrings),
    else "Chooses this section." for a one-choice `name` field, else nothing."""
    if info.description:
        return _paragraph(info.description)
    tp = _strip(info.annotation)
    if typing.get_origin(tp) is Literal and len(typing.get_args(tp)) == 1 and name == "name":
        return "Chooses this section."
    return ""


def class_doc(cls: type) -> str:
    return _paragraph(cls.__dict__.get("__doc__"))


# ----------------------------------------------------------------------------- types


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] -> X."""
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _constraints(metadata: list[Any]) -> tuple[str, str, list[str]]:
    """(lower bound text, upper bound text, other notes) from Field / annotated_types metadata."""
    lower = upper = ""
    notes: list[str] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            sub_lower, sub_upper, sub_notes = _constraints(item.metadata)
            lower, upper, notes = sub_lower or lower, sub_upper or upper, notes + sub_notes
        elif isinstance(item, annotated_types.Ge):
            lower = f"[{_number(item.ge)}"
        elif isinstance(item, annotated_types.Gt):
            lower = f"({_number(item.gt)}"
        elif isinstance(item, annotated_types.Le):
            upper = f"{_number(item.le)}]"
        elif isinstance(item, annotated_types.Lt):
            upper = f"{_number(item.lt)})"
        elif isinstance(item, annotated_types.MinLen) and item.min_length:
            notes.append(f"at least {item.min_length}")
        elif isinstance(item, annotated_types.MaxLen):
            notes.append(f"at most {item.max_length}")
        elif isinstance(item, annotated_types.MultipleOf):
            notes.append(f"a multiple of {_number(item.multiple_of)}")
        elif getattr(item, "strict", None) is True:
            notes.append("strict")
        elif getattr(item, "pattern", None):
            notes.append(f"matching `{item.pattern}`")
    return lower, upper, notes


def _bounded(name: str, metadata: list[Any]) -> str:
    lower, upper, notes = _constraints(metadata)
    text = name
    if lower and upper:
        text = f"{name} in {lower}, {upper}"
    elif lower:
        text = f"{name} {'≥' if lower[0] == '[' else '>'} {lower[1:]}"
    elif upper:
        text = f"{name} {'≤' if upper[-1] == ']' else '<'} {upper[:-1]}"
    if "strict" in notes:
        notes = [note for note in notes if note != "strict"]
        text += " (an integer, not a float)" if name == "int" else " (strict)"
    return text + (f" ({', '.join(notes)})" if notes else "")


class Reference:
    """The walk over the schema: sections in order, each class documented once at its first path."""

    def __init__(self) -> None:
        self.sections: list[dict[str, Any]] = []
        self.anchors: dict[type, str] = {}  # class -> its section's anchor
        self.paths: dict[type, str] = {}

    # --- type text ------------------------------------------------------------------------------

    def link(self, cls: type) -> str:
        path = self.paths.get(cls) or cls.__name__
        return f"[`{path}`](#{self.anchors[cls]})" if cls in self.anchors else f"`{cls.__name__}`"

    def type_text(self, tp: Any, metadata: list[Any] | None = None) -> str:
        metadata = list(metadata or [])
        while typing.get_origin(tp) is typing.Annotated:
            args = typing.get_args(tp)
            tp, metadata = args[0], metadata + list(args[1:])
        if tp is type(None):
            return "null"
        if tp is Any:
            return "any value"
        if typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            if len(choices) == 1:
                return f"`{_value(choices[0])}`"
            return "one of " + ", ".join(f"`{_value(choice)}`" for choice in choices)
        if _is_union(tp):
            args = typing.get_args(tp)
            optional = type(None) in args
            rest = [arg for arg in args if arg is not type(None)]
            models = [_strip(arg) for arg in rest if _is_model(_strip(arg))]
            if models and len(models) == len(rest):
                text = "a section, by its `name`: " + ", ".join(self.link(model) for model in models)
            else:
                text = " or ".join(self.type_text(arg) for arg in rest)
            if metadata and not models:
                text = _bounded(text, metadata)
            return f"{text}, or null" if optional else text
        origin = typing.get_origin(tp)
        if origin in (list, set, frozenset):
            (item,) = typing.get_args(tp) or (Any,)
            inner = self.type_text(item)
            if _is_union(_strip(item)) and " or " in inner:
                inner = f"({inner})"
            return _bounded("list", metadata).replace("list", f"list of {inner}", 1)
        if origin is tuple:
            args = typing.get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return f"list of {self.type_text(args[0])}"
            texts = [self.type_text(arg) for arg in args]
            if len(set(texts)) == 1 and len(texts) == 2:
                return f"pair [{texts[0]}, {texts[0]}]"
            return f"[{', '.join(texts)}]"
        if origin is dict:
            key, value = typing.get_args(tp) or (Any, Any)
            return _bounded(f"mapping of {self.type_text(key)} to {self.type_text(value)}", metadata)
        if _is_model(tp):
            return "section: " + self.link(tp)
        if isinstance(tp, type):
            name = {"str": "string", "bool": "boolean"}.get(tp.__name__, tp.__name__)
            return _bounded(name, metadata)
        return str(tp).replace("typing.", "")

    # --- walking --------------------------------------------------------------------------------

    def children(self, path: str, tp: Any) -> Iterator[tuple[str, type, str]]:
        """(path, model class, qualifier) of every section a field's type holds."""
        tp = _strip(tp)
        origin = typing.get_origin(tp)
        if _is_model(tp):
            yield path, tp, ""
        elif _is_union(tp):
            members = [_strip(arg) for arg in typing.get_args(tp) if arg is not type(None)]
            models = [member for member in members if _is_model(member)]
            tagged = len(models) > 1
            for model in models:
                name = model.model_fields.get("name")
                qualifier = f"name: {name.default}" if tagged and name is not None and isinstance(name.default, str) else ""
                yield path, model, qualifier
            for member in members:
                if not _is_model(member):
                    yield from self.children(path, member)
        elif origin in (list, tuple, set, frozenset):
            for arg in typing.get_args(tp):
                if arg is not Ellipsis:
                    yield from self.children(f"{path}.<i>", arg)
        elif origin is dict:
            key_name = "<key>"
            yield from self.children(f"{path}.{key_name}", typing.get_args(tp)[1])

    def plan(self, cls: type[BaseModel], path: str, qualifier: str = "", title: str | None = None) -> None:
        """Register the sections (anchors first, so types can link forward), depth first in declaration order."""
        if cls in self.anchors:
            return
        heading = title or (f"`{path}` (`{qualifier}`)" if qualifier else f"`{path}`")
        self.anchors[cls] = slug(heading)
        self.paths[cls] = f"{path} ({qualifier})" if qualifier else path
        section = {"cls": cls, "path": path, "heading": heading, "level": 2 if title else 3}
        self.sections.append(section)
        for name, info in cls.model_fields.items():
            key = f"{path}.{name}" if path else name
            for child_path, child, child_qualifier in self.children(key, info.annotation):
                self.plan(child, child_path, child_qualifier)

    def default_text(self, info: FieldInfo) -> str:
        if info.default is not PydanticUndefined:
            return f"`{_value(info.default)}`"
        factory = info.default_factory
        if factory is None:
            return "required"
        if _is_model(factory):
            name = factory.model_fields.get("name")
            if _is_union(_strip(info.annotation)) and name is not None and isinstance(name.default, str):
                return f"`{name.default}` (its defaults)"
            return "its fields' defaults"
        return f"`{_value(factory())}`"

    def rows(self, section: dict[str, Any]) -> list[str]:
        cls, path = section["cls"], section["path"]
        not_searchable = set(getattr(config, "NOT_SEARCHABLE", ()))
        lines = ["| key | type | default | description |", "|---|---|---|---|"]
        for name, info in cls.model_fields.items():
            key = f"{path}.{name}" if path else name
            doc = field_doc(cls, name, info)
            if cls is config.RunConfig and name in not_searchable:
                doc = (doc + " " if doc else "") + "Not searchable."
            if cls is config.SweepConfig and name == "search" and not_searchable:
                listed = ", ".join(f"`{key}`" for key in getattr(config, "NOT_SEARCHABLE", ()))
                doc = (doc + " " if doc else "") + f"Not searchable (where a run executes, not what it learns): {listed}."
            kind = self.type_text(info.annotation, info.metadata)
            cells = [f"`{key}`", kind, self.default_text(info), doc]
            lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
        return lines


def generate() -> str:
    """The whole reference page."""
    reference = Reference()
    reference.plan(config.RunConfig, "", title="Run config (`RunConfig`)")
    reference.plan(config.SweepConfig, "", title="Sweep config (`SweepConfig`)")
    run_anchor, sweep_anchor = reference.anchors[config.RunConfig], reference.anchors[config.SweepConfig]

    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m raysl.config.reference` from raysl/config/; do not edit by hand. -->",
        "",
        "Every field of the run config and the sweep config, generated from the schema in `raysl/config/` by",
        "`python -m raysl.config.reference` (`tests/test_docs.py` fails when this page is stale). What the sections are",
        "for, with a whole sweep file annotated: [configuration.md](configuration.md).",
        "",
        f"- A **run config** ([`RunConfig`](#{run_anchor})) is what `raysl train` takes and `best_config.yaml` holds;",
        "  its keys are written here from its top (`optimizer.lr`).",
        f"- A **sweep file** ([`SweepConfig`](#{sweep_anchor})) holds a run config under `base:`, so a run key",
        "  `optimizer.lr` is `base.optimizer.lr` there (in `--set` too), while `search:` names it without the",
        "  prefix (`search: {optimizer.lr: {grid: [0.001, 0.003]}}`).",
        "- Keys are dotted as `--set` and `search` take them; `<i>` stands for a list item's index (0, 1, ...),",
        "  `<key>` for a mapping's key. Unknown keys are errors at any depth; every field is optional.",
        "- Ranges: `[a, b]` includes its ends, `(a, b]` excludes a. Cross-field rules (e.g. `method.queue_size`",
        "  against the batch) are checked too and are named in the error when broken.",
        "",
        "Sections:",
        "",
    ]
    for section in reference.sections:
        indent = "" if section["level"] == 2 else "  "
        out.append(f"{indent}- [{section['heading']}](#{reference.anchors[section['cls']]})")
    for section in reference.sections:
        cls = section["cls"]
        out += ["", "#" * section["level"] + " " + section["heading"], ""]
        intro = class_doc(cls)
        name = f"`{cls.__name__}`"
        out.append(f"{name}: {intro}" if intro else name)
        if cls is config.SweepConfig:
            out += ["", f"`base` is a whole run config: its keys are those of [the run config](#{run_anchor}), "
                        "each prefixed with `base.`."]
        out += [""] + reference.rows(section)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysl.config.reference", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help=f"exit 1 when {DOC_NAME} is not what would be written")
    parser.add_argument("--out", type=Path, default=DOC, help=f"where to write (default {DOC_NAME})")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if current != text:
            print(STALE, file=sys.stderr)
            return 1
        print(f"{DOC_NAME} is up to date")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
