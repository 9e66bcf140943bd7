"""Keep a write-up's generated section equal to the report it quotes.

    python -m analysis.writeup docs/experiments/multi30k.md            # rewrite every generated section
    python -m analysis.writeup docs/experiments/multi30k.md --check    # exit 1 where one differs

A page (e.g. docs/experiments/multi30k.md) carries prose written by people and, between two markers, a section
copied from a Markdown file a sweep wrote (its ``report/comparison.md``):

    <!-- generated from multi30k/multi30k_en_de/report/comparison.md by python -m analysis.writeup -->
    ...
    <!-- end of generated section -->

The path in the first marker is relative to the page. This command replaces what lies between the markers with that
file, headings one level down (the page has its own title) and relative links and images rewritten to be relative to
the page, so the numbers a write-up quotes are the sweep's own and cannot drift from it; ``--check`` says which
section differs (the project's tests run it on its docs).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from model.cli import command_parser
from model.files import atomic_write

BEGIN = re.compile(r"^<!-- generated from (?P<source>\S+) by python -m analysis\.writeup -->$", re.MULTILINE)
END = "<!-- end of generated section -->"
LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


class WriteupError(ValueError):
    """A page's markers are missing, unbalanced, or name a file that does not exist."""


def _relink(target: str, source_dir: Path, page_dir: Path) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return target  # a URL, an anchor or an absolute path stays as it is
    path, _, anchor = target.partition("#")
    moved = Path(os.path.relpath(source_dir / path, page_dir)).as_posix()
    return moved + (f"#{anchor}" if anchor else "")


def section(source: Path, page: Path) -> str:
    """The text a generated section of ``page`` holds for ``source``: its headings one level down, its relative
    links relative to the page."""
    lines = []
    for line in source.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            line = "#" + line
        lines.append(LINK.sub(lambda m: m.group(1) + _relink(m.group(2), source.parent, page.parent) + m.group(3),
                              line))
    return "\n".join(lines).strip("\n")


def regenerate(page: Path) -> tuple[str, list[str]]:
    """The page with every generated section rewritten from its source, and the sources whose section changed."""
    text = page.read_text(encoding="utf-8")
    starts = list(BEGIN.finditer(text))
    if not starts:
        raise WriteupError(f"{page}: no generated section (a line '<!-- generated from PATH by python -m "
                           f"analysis.writeup -->', then '{END}')")
    out, changed, at = [], [], 0
    for start in starts:
        end = text.find(END, start.end())
        following = starts[starts.index(start) + 1].start() if start is not starts[-1] else len(text)
        if end < 0 or end > following:
            line = text.count("\n", 0, start.start()) + 1
            raise WriteupError(f"{page}, line {line}: the generated section from {start['source']} has no "
                               f"'{END}' before the next one or the end of the page")
        source = page.parent / start["source"]
        if not source.is_file():
            line = text.count("\n", 0, start.start()) + 1
            raise WriteupError(f"{page}, line {line}: {start['source']} does not exist (relative to {page.parent})")
        new = "\n" + section(source, page) + "\n"
        if text[start.end():end] != new:
            changed.append(start["source"])
        out += [text[at:start.end()], new]
        at = end
    out.append(text[at:])
    return "".join(out), changed


def main(argv: list[str] | None = None, prog: str = "python -m analysis.writeup") -> int:
    parser = command_parser(prog, "Rewrite a write-up's generated sections from the reports they quote.", [
        f"{prog} docs/experiments/multi30k.md",
        f"{prog} docs/experiments/multi30k.md --check",
    ])
    parser.add_argument("pages", nargs="+", type=Path, help="Markdown pages with generated sections")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a section differs")
    args = parser.parse_args(argv)
    status = 0
    for page in args.pages:
        try:
            text, changed = regenerate(page)
        except (OSError, WriteupError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for source in changed:
            print(f"{page}: the section from {source} {'differs from it' if args.check else 'rewritten'}")
        if changed and args.check:
            status = 1
        elif changed:
            atomic_write(page, text)
    return status


if __name__ == "__main__":
    sys.exit(main())
