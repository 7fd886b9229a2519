"""Text helpers shared by every report: Markdown tables and cells, number and duration formats."""

from __future__ import annotations

import html
import math


def fmt(value, spec: str, missing: str = "n/a") -> str:
    """``spec.format(value)`` for a finite number, else ``missing``."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return missing
    return spec.format(value)


def format_score(score: float | None) -> str:
    return fmt(score, "{:+.2f}", "")


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no table pipes, no HTML or emphasis markup."""
    text = " ".join(text.split()) or "(empty)"
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]
