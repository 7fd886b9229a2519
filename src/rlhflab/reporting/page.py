"""HTML helpers shared by the run report and the comparison report: page frame, style rules, tables, images.

Every page is self-contained (styles inline, PNGs as data URIs): it can be mailed or attached as one file.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

# style rules both pages use; each page puts its own rules between them
PAGE_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1200px;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
"""
TABLE_CSS = """\
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .35em .7em; vertical-align: top; text-align: left; }
th { background: #f0f3f6; }
"""
FIGURE_CSS = "figure img { width: 100%; height: auto; border: 1px solid #eee; box-sizing: border-box; }\n"
CODE_CSS = "code { background: #f0f3f6; padding: 0 .25em; border-radius: 3px; }\n"

PAGE_END = "</body></html>"


def page_start(title: str, css: str) -> list[str]:
    """The lines up to and including ``<body>``."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{css}</style></head><body>",
    ]


def table_start(css_class: str, header: list[str]) -> str:
    """``<table>`` with its header row."""
    return f'<table class="{css_class}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"


def table_row(cells: list[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def text_or_empty(text: str) -> str:
    """Escaped text, or an ``(empty)`` placeholder that shows the model wrote nothing."""
    return html.escape(text) or "<em>(empty)</em>"


def inline_code(text: str) -> str:
    """HTML-escape, then turn `code` spans into <code> elements."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def score_class(score) -> str:
    """'pos', 'neg' or '' (zero, missing or not finite): the CSS class that colours a judge score."""
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return ""
    return "pos" if score > 0 else "neg" if score < 0 else ""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
