"""The documentation a user navigates: every relative link in README.md and under docs/ reaches a file or folder of
the repository (an anchor within a page is not checked; a page the report writes again on demand and .gitignore
keeps out, such as an interactive comparison.html, counts as there), and the README stays a first screen."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.helpers import REPO

LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _ignored(path: Path, root: Path) -> bool:
    """Whether git ignores ``path`` in the checkout at ``root`` (a generated page), False outside a checkout."""
    found = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=root, capture_output=True, check=False)
    return found.returncode == 0


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    """The relative links of a Markdown page (outside code blocks) whose target is missing or leaves ``root``."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):  # https:, mailto:, an anchor
            continue
        path = (page.parent / target.split("#", 1)[0]).resolve()
        inside = path.is_relative_to(root.resolve())
        if not inside or not (path.exists() or _ignored(path, root)):
            bad.append(f"{page.relative_to(root)}: {target}")
    return bad


def test_every_relative_link_in_the_readme_and_docs_reaches_a_file_of_the_repository(tmp_path: Path):
    bad = [b for page in _pages() for b in broken_links(page)]
    assert not bad, bad
    (tmp_path / "page.md").write_text("[ok](page.md) [gone](missing.md) [out](../../etc/hosts) [web](https://x.org)"
                                      " [anchor](#here)\n```\n[in a block](nowhere.md)\n```\n")
    assert [b.split(": ", 1)[1] for b in broken_links(tmp_path / "page.md", tmp_path)] == [
        "missing.md", "../../etc/hosts"]


def test_the_readme_is_a_first_screen():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move reference material into docs/"
