"""Every relative link in the project's Markdown (README, docs, results) points at a file that exists."""

import re
from pathlib import Path

import pytest

from tests.testing import ROOT as _ROOT

ROOT = Path(_ROOT)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files():
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [p for p in sorted((ROOT / "results").rglob("*.md")) if "runs" not in p.relative_to(ROOT).parts]
    return files


def relative_links(path):
    for target in LINK.findall(path.read_text()):
        target = target.split("#", 1)[0]
        if target and not re.match(r"[a-z]+:", target):  # http:, https:, mailto: are not ours to check
            yield target


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(ROOT)} links to missing files: {broken}"


def test_the_checker_sees_links():
    assert "docs/gpu.md" in set(relative_links(ROOT / "README.md"))
