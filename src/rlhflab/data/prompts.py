"""Prompt lists from local files (text: one per line; JSONL / CSV: a 'prompt' or 'text' field) and a seeded epoch
sampler."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from pathlib import Path

from rlhflab.errors import UserError


def jsonl_rows(path: Path, key: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSONL file; a line that is not JSON is a UserError
    naming ``key``, the file and the line."""
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{key}: {path}:{n} is not valid JSON ({err.msg})") from None


def read_prompts(path: str | Path, key: str = "data.prompts_file") -> list[str]:
    """Non-empty prompts of a .txt (one per line), .jsonl or .csv (with a header; field 'prompt' or 'text') file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{key}: file {str(path)!r} does not exist")
    prompts: list[str] = []
    if p.suffix == ".jsonl":
        for n, row in jsonl_rows(p, key):
            text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise UserError(f"{key}: {p}:{n} needs a string field 'prompt' (or 'text')")
            prompts.append(text)
    elif p.suffix == ".csv":
        with p.open(newline="") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("prompt", "text") if c in (reader.fieldnames or [])), None)
            if column is None:
                raise UserError(
                    f"{key}: {p} needs a header with a 'prompt' (or 'text') column; found {reader.fieldnames}"
                )
            prompts = [row[column] or "" for row in reader]
    else:
        prompts = [line.rstrip("\n") for line in p.read_text().splitlines()]
    prompts = [x for x in prompts if x.strip()]
    if not prompts:
        raise UserError(f"{key}: file {str(path)!r} holds no prompts")
    return prompts


class PromptSampler:
    """Shuffled passes over the prompts, reshuffled each epoch; the position is part of a checkpoint."""

    def __init__(self, prompts: list[str], seed: int):
        self.prompts, self.seed = prompts, seed
        self.epoch, self.position = 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.prompts)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[str]:
        batch = []
        while len(batch) < n:
            if self.position == len(self._order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            batch.append(self.prompts[self._order[self.position]])
            self.position += 1
        return batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._order = self._shuffled(self.epoch)
