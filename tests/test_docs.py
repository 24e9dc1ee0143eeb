"""The documentation holds together: every relative link of the README and docs/ reaches a file (and a
heading, for a `#fragment`), the README stays a first read, and no text file names a development machine's
paths."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
TEXT_SUFFIXES = {".py", ".md", ".js", ".json", ".txt", ".css", ".toml", ".cfg", ".yml", ".yaml", ""}
SKIPPED_DIRS = {".git", ".pytest_cache", ".ruff_cache", ".benchmarks", "__pycache__", "outputs"}


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(line.lstrip("#")) for line in page.read_text().splitlines() if line.startswith("#")}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_relative_links_reach_their_files_and_headings(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: {target} does not exist"
        if fragment:
            assert fragment in _anchors(resolved), f"{page.name}: no heading for #{fragment} in {resolved.name}"


def test_the_readme_is_a_first_read():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    assert "## Does it help?" in lines


def test_no_text_file_names_a_development_machines_paths():
    machine_path = re.compile(r"(?<![\w.])/(?:work|root|home|tmp)/")
    found = []
    for path in REPO.rglob("*"):
        if SKIPPED_DIRS & set(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix not in TEXT_SUFFIXES or path.stat().st_size > 1_000_000:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if machine_path.search(line):
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
