#!/usr/bin/env python3
"""Layout checks of the raysl package (stdlib only; reads the code with ast, imports nothing of it).

    python tools/check_layout.py [--root REPO]      # from the repository root; exit 1 on any violation

Four checks over raysl/**/*.py:

1. big files      a module over MAX_LINES lines (ALLOWLIST: paths that may be, e.g. generated files);
2. cycles         import cycles between modules (Tarjan's strongly connected components of the module graph),
                  each printed with one concrete cycle and the lines of its imports;
3. climbing       an import from a module of a lower stage into one of a higher stage (STAGES below);
4. private names  `from raysl.a import _x` (or `raysl.a._x` on an imported raysl module) from another module.

The module graph: `import raysl.x.y` -> raysl.x.y; `from raysl.x import y` -> raysl.x.y when that is a module,
else raysl.x; relative imports resolved against the importing module's package. Imports inside functions (lazy
imports) count; imports in the body of `if TYPE_CHECKING:` (or `if typing.TYPE_CHECKING:`) do not: they never
run. Importing raysl.x.y also runs the __init__ of raysl and raysl.x; those implicit edges to parent packages are
not counted (otherwise every package would be in a cycle with its own submodules).
"""

from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "raysl"

MAX_LINES = 400
"""A module longer than this (physical lines) is reported."""

ALLOWLIST: tuple[str, ...] = ()
"""Files, relative to the repository root (e.g. "raysl/generated_tables.py"), that may exceed MAX_LINES."""

# The dependency order of the package, lowest first. Each entry is (prefix, stage): a module belongs to the
# entry with the longest prefix that equals its dotted name or is a package above it ("raysl.io" matches
# raysl.io and raysl.io.files, not raysl.iox). A module may import modules of its own stage or a lower one;
# an import of a higher stage is a violation. Edit this list as the package's layout changes; a module that
# no entry matches has no stage and is never reported.
STAGES: list[tuple[str, int]] = [
    # The path a datum takes, bottom to top; a module may import its own stage and the stages below it.
    ("raysl.errors", 0),  # UserError
    ("raysl.io", 0),  # files on local disks and object storage
    ("raysl.config", 1),  # the one typed schema
    ("raysl.ingest", 2),  # source files -> prepared shards, and reading them back
    ("raysl.views", 3),  # image bytes / arrays -> augmented views, the evaluation transform (pure)
    ("raysl.data", 4),  # what a run reads: pretraining plan, data conditions, evaluation images
    ("raysl.methods", 5),  # backbones and the methods' maths
    ("raysl.training", 6),  # the epoch loop, checkpoints, monitor, probe, a run's preflight checks (no Ray)
    ("raysl.report", 7),  # results read back: experiment, leaderboard, plots (no Ray)
    ("raysl.outputs", 8),  # what a user takes away: exported backbones, embedding helpers (no Ray)
    ("raysl.ray_glue", 9),  # Ray Data, Train and Tune: the only Ray, over every stage it drives
    ("raysl.api", 10),  # entry points
    ("raysl.cli", 10),
    ("raysl", 10),
]


# ------------------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Import:
    importer: str  # the importing module's dotted name
    target: str  # the imported raysl module
    line: int
    names: tuple[str, ...] = ()  # `from target import names` (names that are not submodules)
    lazy: bool = False  # inside a function


@dataclass(frozen=True)
class PrivateUse:
    importer: str
    module: str
    name: str
    line: int
    how: str  # "from-import" or "attribute"


@dataclass
class Layout:
    root: Path
    modules: dict[str, Path] = field(default_factory=dict)  # dotted name -> file
    lines: dict[str, int] = field(default_factory=dict)
    imports: list[Import] = field(default_factory=list)
    private: list[PrivateUse] = field(default_factory=list)

    def relative(self, module: str) -> str:
        return self.modules[module].relative_to(self.root).as_posix()


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Visitor(ast.NodeVisitor):
    def __init__(self, layout: Layout, module: str, is_package: bool):
        self.layout, self.module, self.is_package = layout, module, is_package
        self.depth = 0  # functions we are inside
        self.bound: dict[str, str] = {}  # local name -> raysl module it is bound to
        self.attributes: list[ast.Attribute] = []

    # the package a relative import of `level` dots starts from
    def _base(self, level: int) -> str | None:
        parts = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
        if level - 1 > len(parts):
            return None
        return ".".join(parts[: len(parts) - (level - 1)])

    def _existing(self, name: str) -> str | None:
        """The module `name`, or the longest existing module above it (an import of a name inside a module)."""
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in self.layout.modules:
                return candidate
            parts.pop()
        return None

    def _add(self, target: str, line: int, names: tuple[str, ...] = ()) -> None:
        if target != self.module:
            self.layout.imports.append(Import(self.module, target, line, names, self.depth > 0))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            for child in node.orelse:  # the else branch runs
                self.visit(child)
            return
        self.generic_visit(node)

    def _function(self, node) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name != PACKAGE and not alias.name.startswith(PACKAGE + "."):
                continue
            target = self._existing(alias.name)
            if target is None:
                continue
            self._add(target, node.lineno)
            if alias.asname:
                self.bound[alias.asname] = target
            else:
                self.bound[PACKAGE] = PACKAGE  # `import raysl.a.b` binds raysl; raysl.a.b is reached by attributes

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self._base(node.level)
            if base is None:
                return
            source = ".".join(part for part in (base, node.module or "") if part)
        else:
            source = node.module or ""
        if source != PACKAGE and not source.startswith(PACKAGE + "."):
            return
        module = self._existing(source)
        if module is None:
            return
        plain: list[str] = []
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if alias.name != "*" and submodule in self.layout.modules:
                self._add(submodule, node.lineno)
                self.bound[alias.asname or alias.name] = submodule
                if _private(alias.name) and module != self.module:
                    self.layout.private.append(PrivateUse(self.module, module, alias.name, node.lineno, "from-import"))
                continue
            plain.append(alias.name)
            if _private(alias.name) and module != self.module:
                self.layout.private.append(PrivateUse(self.module, module, alias.name, node.lineno, "from-import"))
        if plain:
            self._add(module, node.lineno, tuple(plain))

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.attributes.append(node)
        self.generic_visit(node)

    def finish(self) -> None:
        """`module._x` on a name bound to a raysl module (after the whole file: bindings are file-wide)."""
        for node in self.attributes:
            chain: list[str] = []
            current: ast.expr = node
            while isinstance(current, ast.Attribute):
                chain.append(current.attr)
                current = current.value
            if not isinstance(current, ast.Name) or current.id not in self.bound:
                continue
            chain.reverse()
            module = self.bound[current.id]
            for attr in chain:  # walk down submodules, stop at the first attribute that is not one
                if f"{module}.{attr}" in self.layout.modules:
                    module = f"{module}.{attr}"
                    continue
                if _private(attr) and module != self.module:
                    self.layout.private.append(PrivateUse(self.module, module, attr, node.lineno, "attribute"))
                break


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def collect(root: str | Path, package: str = PACKAGE) -> Layout:
    """Every module of `package` under `root`, its length, its raysl imports and its private-name uses."""
    root = Path(root).resolve()
    layout = Layout(root)
    files = sorted((root / package).rglob("*.py"))
    for path in files:
        layout.modules[module_name(root, path)] = path
    for path in files:
        name = module_name(root, path)
        text = path.read_text(encoding="utf-8")
        layout.lines[name] = len(text.splitlines())
        visitor = _Visitor(layout, name, path.name == "__init__.py")
        visitor.visit(ast.parse(text, filename=str(path)))
        visitor.finish()
    return layout


# ------------------------------------------------------------------------------------------- the checks
def big_files(layout: Layout, max_lines: int = MAX_LINES, allow: tuple[str, ...] = ALLOWLIST) -> list[tuple[str, int]]:
    """(file, lines) of every module over max_lines, longest first."""
    rows = [(layout.relative(m), n) for m, n in layout.lines.items() if n > max_lines and layout.relative(m) not in allow]
    return sorted(rows, key=lambda row: (-row[1], row[0]))


def graph(layout: Layout) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {module: set() for module in layout.modules}
    for item in layout.imports:
        edges[item.importer].add(item.target)
    return edges


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm (iterative): the components of more than one module, each sorted, sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(edges: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest cycle through the component's first member, inside the component: [a, b, ..., a]."""
    inside = set(members)
    start = members[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & inside):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start, start]


def find_cycles(layout: Layout) -> list[dict]:
    """Each import cycle: its modules (the component) and one concrete cycle with each import's line."""
    edges = graph(layout)
    cycles = []
    for members in strongly_connected(edges):
        path = _shortest_cycle(edges, members)
        steps = []
        for a, b in zip(path, path[1:]):
            lines = sorted({item.line for item in layout.imports if item.importer == a and item.target == b})
            lazy = all(item.lazy for item in layout.imports if item.importer == a and item.target == b)
            steps.append((a, b, lines, lazy))
        cycles.append({"modules": members, "cycle": path, "steps": steps})
    return cycles


def stage_of(module: str, stages: list[tuple[str, int]] = STAGES) -> int | None:
    """The stage of the longest prefix of STAGES that is the module or a package above it (None: no entry)."""
    best: tuple[int, int] | None = None
    for prefix, stage in stages:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > best[0]:
                best = (len(prefix), stage)
    return None if best is None else best[1]


def climbing_imports(layout: Layout, stages: list[tuple[str, int]] = STAGES) -> list[tuple[str, int, str, int, str]]:
    """(importer, its stage, target, its stage, its lines) of every module importing one of a higher stage."""
    lines: dict[tuple[str, int, str, int], set[int]] = {}
    for item in layout.imports:
        low, high = stage_of(item.importer, stages), stage_of(item.target, stages)
        if low is not None and high is not None and low < high:
            lines.setdefault((item.importer, low, item.target, high), set()).add(item.line)
    return [(*key, ", ".join(map(str, sorted(found)))) for key, found in sorted(lines.items())]


def private_imports(layout: Layout) -> list[PrivateUse]:
    return sorted(set(layout.private), key=lambda use: (use.importer, use.line, use.module, use.name))


def check(root: str | Path, stages: list[tuple[str, int]] = STAGES, max_lines: int = MAX_LINES,
          allow: tuple[str, ...] = ALLOWLIST) -> dict[str, list]:
    """Every violation by check; all lists empty means the layout is clean."""
    layout = collect(root)
    return {"big files": big_files(layout, max_lines, allow), "cycles": find_cycles(layout),
            "climbing imports": climbing_imports(layout, stages), "private names": private_imports(layout)}


# ------------------------------------------------------------------------------------------- output
def _table(title: str, header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    out = [f"{title}: {len(rows)}"]
    if not rows:
        return out
    cells = [tuple(str(cell) for cell in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for number, row in enumerate(cells):
        out.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        if number == 0:
            out.append("  " + "  ".join("-" * width for width in widths))
    return out


def report(found: dict[str, list], max_lines: int = MAX_LINES) -> str:
    out = _table(f"files over {max_lines} lines", ("file", "lines"), found["big files"])
    out.append(f"import cycles: {len(found['cycles'])}")
    for number, cycle in enumerate(found["cycles"], 1):
        out.append(f"  {number}. {' -> '.join(cycle['cycle'])}"
                   + (f"   (component of {len(cycle['modules'])}: {', '.join(cycle['modules'])})"
                      if len(cycle["modules"]) > len(cycle["cycle"]) - 1 else ""))
        for a, b, lines, lazy in cycle["steps"]:
            out.append(f"       {a} imports {b} at line {', '.join(map(str, lines))}" + (" (in a function)" if lazy else ""))
    out += _table("climbing imports (lower stage imports higher)", ("importer", "stage", "imports", "stage", "lines"),
                  found["climbing imports"])
    out += _table("private names used across modules", ("importer", "line", "name", "how"),
                  [(use.importer, use.line, f"{use.module}.{use.name}", use.how) for use in found["private names"]])
    total = sum(len(rows) for rows in found.values())
    out.append(f"{'OK' if not total else 'FAIL'}: {total} violation(s)")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the repository root (default: the current directory)")
    args = parser.parse_args(argv)
    if not (Path(args.root) / PACKAGE).is_dir():
        print(f"error: no {PACKAGE}/ under {Path(args.root).resolve()} (run from the repository root or give --root)",
              file=sys.stderr)
        return 2
    found = check(args.root)
    print(report(found))
    return 1 if any(found.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
