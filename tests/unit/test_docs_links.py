"""The documentation points only at what the repository holds.

A clone of the repository is all a reader has: every relative link in the
README, docs/ and bench/README.md resolves to a file (and a heading, for
``#anchors``), and no page sends the reader to a folder beside the repository
or to a path of the machine it was written on.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The Markdown a reader of the repository meets.
PAGES = sorted(
    [
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        *(ROOT / "bench").glob("*.md"),
        *(ROOT / "docs").rglob("*.md"),
    ]
)

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
#: A code span that names a file: a relative path with a file extension.
FILE_SPAN = re.compile(r"^(?:\.{1,2}/)*[\w.-]+(?:/[\w.-]+)+\.(?:md|py|yml|yaml|toml|json|sh|lua)$")
#: Traces of files outside the repository: the shared folder of the machine the
#: project was written on, and its absolute paths.
OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])shared/(?:research|contract)/|/work/")


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def prose(page: Path) -> str:
    """The page without its fenced code blocks (sample output, not links)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in prose(page).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            anchor = github_anchor(match.group(1))
            # GitHub numbers a repeated heading: the second is "name-1".
            suffix = 0
            candidate = anchor
            while candidate in found:
                suffix += 1
                candidate = f"{anchor}-{suffix}"
            found.add(candidate)
    return found


def test_the_pages_are_found() -> None:
    assert ROOT / "README.md" in PAGES and ROOT / "docs" / "how-it-works.md" in PAGES


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
        elif not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading #{fragment} in {page_id(resolved)}")
    assert not broken, f"{page_id(page)}: {broken}"


def installed_file(span: str) -> bool:
    """Whether ``span`` is a file of an installed package (``aicostmanager/tracker.py``)."""
    name = span.split("/")[0]
    try:
        spec = importlib.util.find_spec(name)
        locations = spec.submodule_search_locations if spec is not None else None
    except ValueError:
        # celery and kombu replace their module object when imported (no
        # __spec__ then), so once imported, find_spec refuses them.
        locations = getattr(sys.modules.get(name), "__path__", None)
    if not locations:
        return False
    return any((Path(location).parent / span).is_file() for location in locations)


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_file_named_in_code_exists_in_the_repository(page: Path) -> None:
    # Paths are written from the repository's root, from the page's folder, or
    # (in how-it-works.md's layout) from the package's folder; a few name a
    # file of a dependency (the official SDK's sources), which must exist there.
    bases = (ROOT, page.parent, ROOT / "aicm_tasks")
    missing = [
        span
        for span in CODE_SPAN.findall(prose(page))
        if FILE_SPAN.match(span)
        and not any(
            (base / span).resolve().is_relative_to(ROOT) and (base / span).exists()
            for base in bases
        )
        and (span.startswith(".") or not installed_file(span))
    ]
    assert not missing, f"{page_id(page)} names files the repository does not hold: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_page_points_outside_the_repository(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    traces = [match.group(0) for match in OUTSIDE.finditer(text)]
    assert not traces, f"{page_id(page)} points outside the repository: {traces}"


def test_the_checks_catch_a_broken_link_and_an_outside_path(tmp_path: Path) -> None:
    # The checks above must be able to fail: run their pieces on a bad page.
    page = tmp_path / "bad.md"
    page.write_text(
        "# Title\n\nSee [x](missing.md), `../shared/research/x.md`, "
        "[y](#title) and [z](#nothing).\n",
        encoding="utf-8",
    )
    assert LINK.findall(prose(page)) == ["missing.md", "#title", "#nothing"]
    assert anchors(page) == {"title"}
    assert OUTSIDE.search(page.read_text(encoding="utf-8"))
    assert FILE_SPAN.match("../shared/research/x.md")
    assert github_anchor("Redis persistence: what each setting leaves at risk") == (
        "redis-persistence-what-each-setting-leaves-at-risk"
    )
