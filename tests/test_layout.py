"""The package layout stays clean (tools/check_layout.py), and the checker itself finds what it should.

The checker is loaded from tools/check_layout.py of the repository (or, beside this file, check_layout.py);
the repository checked is RAYSL_LAYOUT_ROOT, else the directory above tests/.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import textwrap
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = Path(os.environ.get("RAYSL_LAYOUT_ROOT", HERE.parent))


def _load_checker():
    for path in (REPO / "tools" / "check_layout.py",):
        if path.exists():
            spec = importlib.util.spec_from_file_location("check_layout", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault("check_layout", module)
            spec.loader.exec_module(module)
            return module
    raise FileNotFoundError("tools/check_layout.py")


layout = _load_checker()


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# ----------------------------------------------------------------------------- the repository


@pytest.mark.skipif(not (REPO / "raysl").is_dir(), reason="no raysl/ package at RAYSL_LAYOUT_ROOT")
def test_the_repository_layout_has_no_violations():
    found = layout.check(REPO)
    if any(found.values()):
        pytest.fail("\n" + layout.report(found), pytrace=False)


# ----------------------------------------------------------------------------- the checker


def test_a_cycle_is_found_through_from_imports_of_submodules_and_lazy_imports(tmp_path):
    write_tree(tmp_path, {
        "raysl/__init__.py": "",
        "raysl/a.py": "from raysl import b\n",  # `from pkg import name`: the submodule raysl.b
        "raysl/b.py": "def f():\n    from .c import thing\n",  # relative, inside a function: counts
        "raysl/c.py": "import raysl.a\nthing = 1\n",
        "raysl/d.py": "import raysl.a\n",  # imports into the cycle, not part of it
    })
    cycles = layout.find_cycles(layout.collect(tmp_path))
    assert [cycle["modules"] for cycle in cycles] == [["raysl.a", "raysl.b", "raysl.c"]]
    assert cycles[0]["cycle"] == ["raysl.a", "raysl.b", "raysl.c", "raysl.a"]
    assert "raysl.a -> raysl.b -> raysl.c -> raysl.a" in layout.report(layout.check(tmp_path))


def test_an_import_under_type_checking_is_ignored_but_its_else_branch_counts(tmp_path):
    write_tree(tmp_path, {
        "raysl/__init__.py": "",
        "raysl/a.py": "from raysl.b import B\n",
        "raysl/b.py": """\
            import typing
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from raysl.a import A
            if typing.TYPE_CHECKING:
                import raysl.a
            class B: ...
        """,
        "raysl/c.py": "from raysl.a import x\n",
        "raysl/e.py": """\
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                pass
            else:
                from raysl.c import y
        """,
    })
    found = layout.collect(tmp_path)
    assert layout.find_cycles(found) == []
    assert not any(item.importer == "raysl.b" for item in found.imports)
    assert any(item.importer == "raysl.e" and item.target == "raysl.c" for item in found.imports)


def test_a_climbing_import_is_found_by_the_longest_prefix(tmp_path):
    write_tree(tmp_path, {
        "raysl/__init__.py": "",
        "raysl/low/__init__.py": "",
        "raysl/low/core.py": "from ..high import api\n",  # stage 0 -> 2: a climb
        "raysl/low/special.py": "from raysl.high import api\n",  # its own entry: stage 3, not a climb
        "raysl/high/__init__.py": "",
        "raysl/high/api.py": "from raysl.low.core import x\n",  # down: fine
        "raysl/lowish.py": "import raysl.high.api\n",  # "raysl.low" does not match raysl.lowish
    })
    stages = [("raysl.low", 0), ("raysl.low.special", 3), ("raysl.high", 2)]
    assert layout.stage_of("raysl.low.special", stages) == 3
    assert layout.stage_of("raysl.lowish", stages) is None
    climbs = layout.climbing_imports(layout.collect(tmp_path), stages)
    assert climbs == [("raysl.low.core", 0, "raysl.high.api", 2, "1")]


def test_private_names_across_modules_are_found(tmp_path):
    write_tree(tmp_path, {
        "raysl/__init__.py": "",
        "raysl/a.py": "_secret = 1\n__version__ = '1'\ndef _helper(): ...\nuse = _helper()\n",
        "raysl/pkg/__init__.py": "",
        "raysl/pkg/b.py": """\
            from raysl.a import _secret, __version__
            import raysl.a
            from raysl import a as alias
            def f():
                return raysl.a._helper(), alias._helper(), alias.__name__
        """,
    })
    uses = layout.private_imports(layout.collect(tmp_path))
    assert [(use.importer, use.module, use.name, use.how) for use in uses] == [
        ("raysl.pkg.b", "raysl.a", "_secret", "from-import"),
        ("raysl.pkg.b", "raysl.a", "_helper", "attribute"),
    ]  # the dunders are not reported; raysl.a's own _helper() is not either


def test_big_files_respect_the_limit_and_the_allowlist(tmp_path):
    write_tree(tmp_path, {
        "raysl/__init__.py": "",
        "raysl/big.py": "x = 1\n" * 401,
        "raysl/generated.py": "x = 1\n" * 500,
        "raysl/fits.py": "x = 1\n" * 400,
    })
    found = layout.collect(tmp_path)
    assert layout.big_files(found, 400, ("raysl/generated.py",)) == [("raysl/big.py", 401)]


def test_main_exits_1_on_a_violation_and_0_when_clean(tmp_path, capsys):
    write_tree(tmp_path / "bad", {"raysl/__init__.py": "", "raysl/a.py": "from raysl.b import x\n",
                                  "raysl/b.py": "from raysl.a import y\n"})
    write_tree(tmp_path / "good", {"raysl/__init__.py": "", "raysl/a.py": "from raysl.b import x\n", "raysl/b.py": ""})
    assert layout.main(["--root", str(tmp_path / "bad")]) == 1
    assert "FAIL" in capsys.readouterr().out
    assert layout.main(["--root", str(tmp_path / "good")]) == 0
    assert "OK: 0 violation(s)" in capsys.readouterr().out
