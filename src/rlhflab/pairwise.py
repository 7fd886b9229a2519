"""What ``rlhflab rm`` and ``rlhflab dpo`` share: the run's preference pairs, their order, the step's metrics sink.

The pairs come from ``preference.file`` ('demo' = :mod:`rlhflab.data.pairs`) or ``preference.dataset``; held-out
pairs from ``preference.eval_file`` / ``eval_dataset_split``, else the last ``preference.eval_share`` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tqdm.auto import tqdm

from rlhflab.config import Config
from rlhflab.data.preferences import (
    PreferencePair,
    is_conversational,
    read_pairs_dataset,
    read_pairs_file,
    render_pairs,
    split_pairs,
)
from rlhflab.errors import UserError
from rlhflab.tracking import JsonlSink


def load_pairs(cfg: Config, tokenizer) -> tuple[list[PreferencePair], list[PreferencePair], bool]:
    """(training pairs, held-out pairs (at most preference.max_eval_pairs), conversational?) as text."""
    p = cfg.preference
    eval_rows = None
    if p.file == "demo":
        from rlhflab.data.pairs import ensure_demo_pairs

        files = ensure_demo_pairs()
        train_rows = read_pairs_file(files.train_file)
        eval_rows = read_pairs_file(p.eval_file or files.eval_file, "preference.eval_file")
    elif p.file:
        train_rows = read_pairs_file(p.file)
        if p.eval_file:
            eval_rows = read_pairs_file(p.eval_file, "preference.eval_file")
    else:
        train_rows = read_pairs_dataset(p.dataset, p.dataset_split)
        if p.eval_dataset_split:
            eval_rows = read_pairs_dataset(p.dataset, p.eval_dataset_split, "preference.eval_dataset_split")
    if eval_rows is None:
        train_rows, eval_rows = split_pairs(train_rows, p.eval_share)
    conversational = is_conversational(train_rows)
    if eval_rows and is_conversational(eval_rows) != conversational:
        raise UserError("preference.eval_file: its pairs and the training pairs must both be text or both messages")
    if not train_rows:
        raise UserError("preference.file: no training pairs left after holding out preference.eval_share")
    train = render_pairs(train_rows, tokenizer)
    held_out = render_pairs(eval_rows[: p.max_eval_pairs], tokenizer, "preference.eval_file")
    return train, held_out, conversational


def chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class StepLog:
    """metrics.jsonl (one object per step) and a tqdm bar showing ``shown`` metrics."""

    def __init__(self, run_dir: Path, total: int, initial: int, desc: str, shown: tuple[str, ...], progress: bool):
        self.sink = JsonlSink(run_dir / "metrics.jsonl")
        self.shown = shown
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)

    def log(self, metrics: dict) -> None:
        self.sink.log(metrics)
        self.bar.set_postfix({k.split("/")[-1]: f"{metrics[k]:.3f}" for k in self.shown if k in metrics}, refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        self.sink.close()
