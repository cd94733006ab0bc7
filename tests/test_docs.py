"""The docs stay true: the generated configuration reference is current, every relative link in README.md and
docs/*.md points at a file (and heading) that exists, and the README stays a short front door with its two
commands. No Ray, no torch: about a second."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from raysl.config import reference

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans, where links are links."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a Markdown file (duplicates get -1, -2, ...), plus explicit id= anchors."""
    text = re.sub(r"^(```|~~~).*?^\1[^\n]*$", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    anchors: set[str] = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, flags=re.M):
        anchor = reference.slug(heading)
        count = counts.get(anchor, 0)
        counts[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def _links(path: Path) -> list[str]:
    return LINK.findall(_prose(path.read_text(encoding="utf-8")))


def test_configuration_reference_is_current():
    """docs/configuration-reference.md is what `python -m raysl.config.reference` writes now: a field added to, renamed
    in or documented in raysl/config.py without regenerating fails here."""
    assert reference.DOC.is_file(), reference.STALE
    assert reference.DOC.read_text(encoding="utf-8") == reference.generate(), reference.STALE


def test_reference_check_command(tmp_path):
    """--check exits 0 on the current file and 1, with the message saying what to run, on a stale one."""
    current = tmp_path / "reference.md"
    current.write_text(reference.generate(), encoding="utf-8")
    assert reference.main(["--check", "--out", str(current)]) == 0
    current.write_text(reference.generate() + "a line someone added\n", encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "raysl.config.reference", "--check", "--out", str(current)],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 1
    assert "docs/configuration-reference.md is stale: run python -m raysl.config.reference" in run.stderr


def test_reference_covers_every_field():
    """Every field of every section of the run and sweep configs has its row, under its dotted key."""
    text = reference.generate()
    from raysl.config import DataConfig, EvaluationConfig, MoCoConfig, RunConfig, SweepConfig

    for name in RunConfig.model_fields:
        assert f"| `{name}` |" in text
    for name in SweepConfig.model_fields:
        assert f"| `{name}` |" in text
    for prefix, section in (("data", DataConfig), ("evaluation", EvaluationConfig), ("method", MoCoConfig)):
        for name in section.model_fields:
            assert f"| `{prefix}.{name}` |" in text
    assert "| `views.crops.<i>.scale` | pair [float in (0, 1], float in (0, 1]] | `[0.3, 1.0]` |" in text
    assert reference.generate() == text  # deterministic


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    """Every relative link (and image) points at an existing file, and its #anchor at a heading there."""
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else resolved}")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(broken)


def test_readme_is_a_front_door():
    """The README stays short and keeps the two commands (and they exist in the Makefile, as CI runs them)."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) < 220
    assert "make quickstart" in text and "make test" in text
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^quickstart:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_docs_pages_are_linked_from_the_readme():
    """Every page under docs/ is reachable from the README, directly or through a page it links to."""
    reached, todo = {README.resolve()}, [README]
    while todo:
        page = todo.pop()
        for target in _links(page):
            path_part = target.partition("#")[0]
            if not path_part or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            resolved = (page.parent / path_part).resolve()
            if resolved.suffix == ".md" and resolved.is_file() and resolved not in reached:
                reached.add(resolved)
                todo.append(resolved)
    missing = [str(page.relative_to(ROOT)) for page in PAGES if page.resolve() not in reached]
    assert not missing, f"docs pages no link leads to from README.md: {missing}"
