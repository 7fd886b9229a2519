"""The offline demo's preference pairs, written by the demo corpus's own grammar (:mod:`rlhflab.data.corpus`).

Each pair opens like a review (the first 2–6 words of a neutral opening sentence, as the RL prompts are the first
words of reviews); ``chosen`` continues it with sentences the grammar writes for *positive* reviews, ``rejected``
with sentences it writes for *negative* ones. The labels are the generator's, never VADER's, so VADER and the
naive-Bayes judge stay independent of the reward model trained on them. ``ensure_demo_pairs()`` writes
``$RLHFLAB_HOME/demo-pairs-v1-seed0/{train,eval}.jsonl`` on first use (a second); the held-out pairs continue the
same seeded stream, so no pair is in both files.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from rlhflab.cache import build_once, default_home
from rlhflab.data.corpus import _CLOSE, _NEGATIVE, _NEUTRAL, _OPEN_NEUTRAL, _POSITIVE, _clashes_with_eval, _Writer
from rlhflab.data.preferences import PreferencePair

N_TRAIN_PAIRS, N_EVAL_PAIRS = 2000, 200
PAIRS_VERSION = 1  # bump when the pairs change


def _continuation(writer: _Writer, rng: random.Random, sentiment: str, n: int) -> str:
    """``n`` sentences of a ``sentiment`` review body: mostly polar ones, now and then a neutral fact or a close."""
    polar = _POSITIVE if sentiment == "positive" else _NEGATIVE
    sentences = [writer.body(rng.choice(polar))]  # the first one always says what the review thinks
    for i in range(1, n):
        if i == n - 1 and rng.random() < 0.3:
            sentences.append(writer.fill(rng.choice(_CLOSE[sentiment])))
        else:
            sentences.append(writer.body(rng.choice(polar if rng.random() < 0.8 else _NEUTRAL)))
    return " ".join(sentences)


def demo_pairs(n: int, seed: int = 0) -> list[PreferencePair]:
    """``n`` distinct pairs, deterministic for ``seed``; a prefix of ``demo_pairs(n + k, seed)``. No prompt equals,
    starts or is a prefix of a held-out evaluation opening."""
    rng = random.Random(seed * 7919 + 17)
    writer = _Writer(rng)
    pairs: dict[tuple[str, str, str], None] = {}
    for _ in range(20 * n + 100):
        if len(pairs) == n:
            break
        words = writer.fill(rng.choice(_OPEN_NEUTRAL)).split()
        k = min(rng.randint(2, 6), len(words) - 1)
        prompt, rest = " ".join(words[:k]), " ".join(words[k:])
        if _clashes_with_eval(prompt):
            continue
        sentences = rng.choice((1, 2, 2, 3))
        chosen = f" {rest} {_continuation(writer, rng, 'positive', sentences)}"
        rejected = f" {rest} {_continuation(writer, rng, 'negative', sentences)}"
        pairs[(prompt, chosen, rejected)] = None
    return [PreferencePair(*key) for key in pairs]


@dataclass(frozen=True)
class DemoPairs:
    train_file: Path
    eval_file: Path

    @classmethod
    def in_folder(cls, root: Path) -> DemoPairs:
        return cls(root / "train.jsonl", root / "eval.jsonl")


def write_pairs(path: Path, pairs: list[PreferencePair]) -> None:
    path.write_text("".join(json.dumps(asdict(p)) + "\n" for p in pairs), encoding="utf-8")


def ensure_demo_pairs(home: Path | str | None = None, seed: int = 0) -> DemoPairs:
    """The demo's training and held-out pair files for ``seed``, written on first use."""
    home = Path(home).expanduser() if home is not None else default_home()

    def build(out: Path) -> None:
        pairs = demo_pairs(N_TRAIN_PAIRS + N_EVAL_PAIRS, seed)
        files = DemoPairs.in_folder(out)
        write_pairs(files.train_file, pairs[:N_TRAIN_PAIRS])
        write_pairs(files.eval_file, pairs[N_TRAIN_PAIRS:])
        (out / "manifest.json").write_text(json.dumps({"version": PAIRS_VERSION, "seed": seed}) + "\n")

    def complete(root: Path) -> bool:
        files = DemoPairs.in_folder(root)
        return (root / "manifest.json").is_file() and files.train_file.is_file() and files.eval_file.is_file()

    return DemoPairs.in_folder(build_once(home / f"demo-pairs-v{PAIRS_VERSION}-seed{seed}", build, complete))
