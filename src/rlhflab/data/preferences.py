"""Preference pairs: ``{"prompt", "chosen", "rejected"}`` rows (TRL's standard format) from JSONL or ``datasets``.

Two shapes are read, as TRL reads them. *Standard*: three strings; the text judged is ``prompt + chosen`` (so a
continuation usually starts with a space). *Conversational*: lists of ``{"role", "content"}`` messages, the
prompt's turns and the answer's (assistant) turns, rendered through the tokenizer's chat template
(:func:`render_pairs`). Every bad row is refused with one line naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlhflab.data.prompts import jsonl_rows
from rlhflab.errors import UserError

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class PreferencePair:
    """One comparison as text: the prompt, and the preferred and the dispreferred continuation of it."""

    prompt: str
    chosen: str
    rejected: str


Row = dict  # a raw row: strings, or lists of messages


def _is_messages(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    )


def check_row(row, where: str) -> Row:
    """``row`` when it is a valid pair; else a UserError naming ``where`` (file:line) and what is wrong."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object with {', '.join(FIELDS)}, got {type(row).__name__}")
    missing = [f for f in FIELDS if f not in row]
    if missing:
        raise UserError(f"{where}: missing field {missing[0]!r} (a pair needs {', '.join(FIELDS)})")
    kinds = {f: "text" if isinstance(row[f], str) else "messages" if _is_messages(row[f]) else None for f in FIELDS}
    bad = next((f for f in FIELDS if kinds[f] is None), None)
    if bad:
        raise UserError(f"{where}: field {bad!r} must be a string or a list of {{role, content}} messages")
    if len(set(kinds.values())) > 1:
        raise UserError(f"{where}: mixes text and message lists; give all three fields in one shape")
    for f in ("chosen", "rejected"):
        empty = not row[f].strip() if kinds[f] == "text" else not any(m["content"].strip() for m in row[f])
        if empty:
            raise UserError(f"{where}: field {f!r} is empty")
    if row["chosen"] == row["rejected"]:
        raise UserError(f"{where}: chosen and rejected are identical (a pair must say which answer is better)")
    return row


def read_pairs_file(path: str | Path, key: str = "preference.file") -> list[Row]:
    """Rows of a JSONL file, each checked by :func:`check_row`; a missing or empty file is a UserError."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(f"{key}: file {str(path)!r} does not exist")
    rows = [check_row(row, f"{key}: {p}:{n}") for n, row in jsonl_rows(p, key)]
    if not rows:
        raise UserError(f"{key}: file {str(path)!r} holds no preference pairs")
    return rows


def read_pairs_dataset(name: str, split: str, key: str = "preference.dataset") -> list[Row]:
    """Rows of a Hugging Face dataset split with prompt / chosen / rejected columns (through ``datasets``)."""
    try:
        from datasets import load_dataset

        data = load_dataset(name, split=split)
    except Exception as err:  # noqa: BLE001 - network, missing dataset, bad split: one line for the user
        raise UserError(f"{key}: cannot load {name!r} split {split!r} ({type(err).__name__}: {err})") from None
    rows = [check_row(dict(row), f"{key}: {name}[{split}] row {i}") for i, row in enumerate(data)]
    if not rows:
        raise UserError(f"{key}: {name!r} split {split!r} holds no preference pairs")
    return rows


def render_pairs(rows: list[Row], tokenizer=None, key: str = "preference.file") -> list[PreferencePair]:
    """Text pairs. Message lists go through the tokenizer's chat template: the prompt with the generation prompt
    added, each answer as what the full conversation adds after it (so prompt + answer = the whole chat)."""
    pairs = []
    for row in rows:
        if isinstance(row["prompt"], str):
            pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"]))
            continue
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise UserError(f"{key}: conversational pairs need a tokenizer with a chat template")
        prompt = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        answers = []
        for field in ("chosen", "rejected"):
            full = tokenizer.apply_chat_template(row["prompt"] + row[field], tokenize=False)
            if not full.startswith(prompt):
                raise UserError(f"{key}: the chat template does not render the prompt as a prefix of {field}")
            answers.append(full[len(prompt) :])
        pairs.append(PreferencePair(prompt, *answers))
    return pairs


def is_conversational(rows: list[Row]) -> bool:
    """Whether the rows are message lists (their prompts are already rendered through the chat template)."""
    return bool(rows) and not isinstance(rows[0]["prompt"], str)


def split_pairs(rows: list, eval_share: float) -> tuple[list, list]:
    """(training, held-out): the last ``eval_share`` of the rows are held out (at least one when both sides can
    have one), in file order so the split is the same on every run."""
    n_eval = int(round(len(rows) * eval_share))
    if eval_share > 0 and len(rows) >= 2:
        n_eval = min(max(n_eval, 1), len(rows) - 1)
    return rows[: len(rows) - n_eval], rows[len(rows) - n_eval :]
