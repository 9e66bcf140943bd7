"""The report's building blocks, shared by the sweep report (analysis/report.py) and the test-set comparison
(analysis/testset.py): an HTML page of sections, a Markdown table, and the upload of a report written into the local
copy of a sweep in remote storage."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from model.files import atomic_write
from sweeps.results import REPORT_DIR
from sweeps.storage import join_storage, upload

from .load import SweepResults

LONG_PATH = 40  # characters of a path or URI shown in a table cell (its end); the rest on hover


def _text(v) -> str:
    """A table cell's text: a missing value (NaN, None) is blank, not "nan"; floats to 4 significant digits."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _cell(v) -> str:
    text = _text(v)
    if len(text) > LONG_PATH and "/" in text and not any(ch.isspace() for ch in text):  # a path, not a sentence
        return f'<td title="{html.escape(text)}">…{html.escape(text[-(LONG_PATH - 1):])}</td>'
    return f"<td>{html.escape(text)}</td>"


class Page:
    """An HTML page assembled from sections; plotly.js is embedded once, in the first chart."""

    def __init__(self, title: str) -> None:
        self.title, self.parts, self._plotly_js = title, [], True

    def h(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def plot(self, pfig) -> None:
        self.parts.append(pfig.to_html(full_html=False, include_plotlyjs="inline" if self._plotly_js else False))
        self._plotly_js = False

    def image(self, path: Path, alt: str) -> None:
        data = base64.b64encode(path.read_bytes()).decode()
        kind = path.suffix.lstrip(".").replace("jpg", "jpeg")
        self.parts.append(f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">')

    def table(self, df: pd.DataFrame) -> None:
        """A table; a path or URI longer than LONG_PATH shows its end, the whole of it on hover (and in the CSV)."""
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        rows = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in df.itertuples(index=False))
        self.parts.append(f'<table class="t"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>')

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def write(self, path: Path) -> Path:
        style = ("body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;color:#222}"
                 "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;"
                 "border-bottom:1px solid #ddd;text-align:right;overflow-wrap:anywhere}pre{background:#f6f6f6;padding:1em;overflow:auto;"
                 "font-size:12px}img{max-width:100%}")
        doc = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(self.title)}"
               f"</title><style>{style}</style></head><body>\n<h1>{html.escape(self.title)}</h1>\n"
               + "\n".join(self.parts) + "\n</body></html>\n")
        atomic_write(path, doc)
        return path


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(_text(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def publish(s: SweepResults, folder: Path) -> str:
    """A report written into the local copy of a sweep in remote storage goes up beside the sweep
    (``<sweep URI>/report``); returns that URI ('' for a local sweep, or a report written elsewhere)."""
    if not s.remote or folder.resolve() != (s.path / REPORT_DIR).resolve():
        return ""
    target = join_storage(s.source, REPORT_DIR)
    upload(folder, target)
    return target
