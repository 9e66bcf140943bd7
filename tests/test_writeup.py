"""A write-up's generated section: rewritten from the report it names, the page's own prose kept, links moved to
the page's folder; refusals name the page and line; the project's own docs are up to date with their reports."""

from __future__ import annotations

import re
from pathlib import Path

from analysis.writeup import END, main

ROOT = Path(__file__).resolve().parents[1]
REPORT = """# Test-set comparison: demo

![the chart](comparison.png) and [the page](comparison.html#target), [Ray](https://docs.ray.io), [top](#top)

## Mean test BLEU per point

| sweep | heads | test_bleu_mean |
|---|---|---|
| importance | 3 | 35.16 |
"""


def _page(tmp_path: Path, body: str = "old numbers\n") -> Path:
    report = tmp_path / "runs" / "demo" / "report" / "comparison.md"
    report.parent.mkdir(parents=True)
    report.write_text(REPORT)
    page = tmp_path / "docs" / "demo.md"
    page.parent.mkdir()
    page.write_text("# Demo\n\nProse before.\n\n<!-- generated from ../runs/demo/report/comparison.md by python -m "
                    f"analysis.writeup -->\n{body}{END}\n\nProse after, kept.\n")
    return page


def test_the_section_is_rewritten_from_its_report_and_the_prose_is_kept(tmp_path, capsys):
    page = _page(tmp_path)
    assert main([str(page), "--check"]) == 1 and "old numbers" in page.read_text()  # --check changes nothing
    assert main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Demo\n\nProse before.\n") and text.endswith(f"{END}\n\nProse after, kept.\n")
    assert "old numbers" not in text
    assert "## Test-set comparison: demo" in text and "### Mean test BLEU per point" in text  # one level down
    assert "| importance | 3 | 35.16 |" in text
    assert "![the chart](../runs/demo/report/comparison.png)" in text  # relative to the page now
    assert "[the page](../runs/demo/report/comparison.html#target)" in text
    assert "[Ray](https://docs.ray.io)" in text and "[top](#top)" in text  # URLs and anchors stay
    capsys.readouterr()
    assert main([str(page), "--check"]) == 0 and main([str(page)]) == 0  # up to date: nothing to say
    assert capsys.readouterr().out == "" and page.read_text() == text
    report = tmp_path / "runs" / "demo" / "report" / "comparison.md"
    report.write_text(REPORT.replace("35.16", "35.20"))
    assert main([str(page), "--check"]) == 1
    assert "the section from ../runs/demo/report/comparison.md differs" in capsys.readouterr().out


def test_bad_pages_are_refused_naming_the_page_the_line_and_what_is_missing(tmp_path, capsys):
    plain = tmp_path / "plain.md"
    plain.write_text("# Nothing generated here\n")
    assert main([str(plain)]) == 2
    assert f"{plain}: no generated section" in capsys.readouterr().err
    page = _page(tmp_path)
    text = page.read_text()
    page.write_text(text.replace(END, "the end marker is gone"))
    assert main([str(page)]) == 2
    err = capsys.readouterr().err
    assert f"{page}, line 5: the generated section from ../runs/demo/report/comparison.md has no" in err
    assert "the end marker is gone" in page.read_text()  # nothing written
    page.write_text(text.replace("../runs/demo/", "../runs/gone/"))
    assert main([str(page)]) == 2
    assert "../runs/gone/report/comparison.md does not exist" in capsys.readouterr().err


def test_the_projects_write_ups_quote_their_reports_as_they_are():
    marker = re.compile(r"^<!-- generated from \S+ by python -m analysis\.writeup -->$", re.M)
    pages = [p for p in sorted((ROOT / "docs").rglob("*.md")) if marker.search(p.read_text())]
    assert pages, "docs/ has no page with a generated section (docs/experiments/multi30k.md should)"
    stale = [str(p.relative_to(ROOT)) for p in pages if main([str(p), "--check"]) != 0]
    assert not stale, f"rewrite them: python -m analysis.writeup {' '.join(stale)}"
