"""Compare two metrics.jsonl files key by key, exactly: ``python bench/compare_metrics.py A B``.

Wall-clock keys (``time/*``, ``perf/*``) are left out; every other value must be equal (floats bit for bit).
Exit status 0 when the runs match, 1 with the first differences listed otherwise. Used to show that a refactor is
behaviour-preserving (same seed, same machine type)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

SKIPPED = ("time/", "perf/")


def timeless_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return [{k: v for k, v in row.items() if not k.startswith(SKIPPED)} for row in rows]


def differences(a: list[dict], b: list[dict]) -> list[str]:
    found = [] if len(a) == len(b) else [f"{len(a)} rows vs {len(b)} rows"]
    for i, (row_a, row_b) in enumerate(zip(a, b)):
        for key in sorted(row_a.keys() | row_b.keys()):
            if key not in row_a or key not in row_b:
                found.append(f"row {i}: {key} only in {'the first' if key in row_a else 'the second'}")
            elif row_a[key] != row_b[key] and not (row_a[key] != row_a[key] and row_b[key] != row_b[key]):  # NaN = NaN
                found.append(f"row {i}: {key}: {row_a[key]!r} != {row_b[key]!r}")
    return found


def main(argv: list[str]) -> int:
    a, b = timeless_rows(Path(argv[0])), timeless_rows(Path(argv[1]))
    found = differences(a, b)
    keys = len(a[0]) if a else 0
    print(f"{argv[0]} vs {argv[1]}: {len(a)} rows x {keys} keys, {'identical' if not found else 'DIFFERENT'}")
    for line in found[:20]:
        print("  " + line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
