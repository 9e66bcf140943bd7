"""The report's page helpers: tables that fit a window (long paths shortened, whole on hover), Markdown tables."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from analysis.pages import LONG_PATH, Page, markdown_table


def test_a_long_path_shows_its_end_and_the_whole_on_hover_while_sentences_and_numbers_stay(tmp_path: Path):
    path = "s3://bucket/headsweep/multi30k_en_de/prune_trainable_88d0675c_1_data_max_tokens=256/checkpoint_000003"
    sentence = "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt, steht auf der Straße."
    df = pd.DataFrame({"trial_id": ["88d0675c"], "bleu": [37.2491], "open_heads": [6], "note": [None],
                       "translation": [sentence], "checkpoint": [path]})
    page = Page("t")
    page.table(df)
    doc = page.write(tmp_path / "p.html").read_text()
    cells = re.findall(r"<td( title=\"[^\"]*\")?>([^<]*)</td>", doc)
    assert [c[1] for c in cells[:5]] == ["88d0675c", "37.25", "6", "", html.escape(sentence)]
    title, shown = cells[5]
    assert title == f' title="{html.escape(path)}"' and shown == "…" + path[-(LONG_PATH - 1):]
    assert len(shown) == LONG_PATH and path.endswith(shown[1:])
    assert "<th>checkpoint</th>" in doc and "overflow-wrap:anywhere" in doc


def test_markdown_tables_leave_missing_values_blank():
    df = pd.DataFrame({"a": [1.23456, None], "b": ["x", "y"]})
    assert markdown_table(df).splitlines() == ["| a | b |", "|---|---|", "| 1.235 | x |", "|  | y |"]
