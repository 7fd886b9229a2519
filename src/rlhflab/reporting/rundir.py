"""Reading a run directory back: ``config.yaml``, JSONL files, ``eval/summary.json`` and metric series.

Every reader is forgiving (a missing or half-written file gives an empty result, never an exception): reports are
written for runs that crashed or have not finished too.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import yaml


def read_config(run_dir: Path) -> dict:
    """The resolved config as a plain dict ({} when config.yaml is missing or unreadable)."""
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as err:
        print(f"report: cannot read {path}: {err}", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line; blank and malformed lines (a crash mid-write) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_summary(run_dir: Path) -> dict | None:
    """``eval/summary.json`` as {"before": {...}, "after": {...}}, or None when absent or malformed."""
    path = run_dir / "eval" / "summary.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("before"), dict)
        or not isinstance(data.get("after"), dict)
    ):
        return None
    return data


def section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric; rows without it are left out, None (a non-finite value) becomes NaN."""
    steps, values = [], []
    for i, row in enumerate(metrics):
        if key not in row:
            continue
        value = row[key]
        if value is not None and not isinstance(value, (int, float)):
            continue
        steps.append(float(row.get("step", i + 1)))
        values.append(math.nan if value is None else float(value))
    return steps, values
