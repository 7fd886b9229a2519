"""The offline demo's data, no model: the synthetic review corpus, its RL training prompts and held-out openings.

``ensure_demo_data()`` writes, on first use, ``$RLHFLAB_HOME/demo-data-v1-seed0/`` with ``corpus.jsonl``
(``{"text", "sentiment", "split"}``: "train" reviews, "heldout" ones for perplexity), ``train_prompts.txt`` and
``eval_prompts.txt`` (one per line) — the same files as the demo model's build (``models.tiny``), for runs that
use the demo's prompts or its naive-Bayes judge with another model, without training the demo model.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rlhflab.cache import build_once, default_home
from rlhflab.data.corpus import EVAL_OPENINGS, Review, generate_reviews, training_prompts

N_REVIEWS, N_HELDOUT, N_TRAIN_PROMPTS = 6000, 300, 1024  # the published demo's sizes
DATA_VERSION = 1  # bump when the corpus or the prompts change

NEGATIVE_OPENINGS: tuple[str, ...] = (
    "It was the dullest",
    "That was the most boring",
    "Easily the weakest",
    "By far the silliest",
    "Frankly, it is the most tedious",
    "Sadly, the script was",
    "The dialogue was so bad that",
    "I could not stand",
    "I regret watching",
    "Two hours of my life",
    "The acting was terrible and",
    "I hated every minute of",
    "It is a dreadful",
    "The jokes fell flat and",
    "A painful, boring",
    "What an awful",
    "Nothing in this film",
    "I walked out of",
    "The plot was a mess and",
    "Boring, slow and",
    "It was a terrible",
    "The film is a disaster",
    "A truly awful",
    "I fell asleep during",
    "The characters were so annoying",
    "The effects looked cheap and",
    "I wanted my money back after",
    "Terrible acting, a dull",
    "The pacing was so slow",
    "It felt like a chore",
    "What a disappointing",
    "The script is lazy and",
    "Every scene dragged and",
    "I have never been so disappointed",
    "The ending ruined",
    "It is hard to sit through",
    "This film was a total mess",
    "This movie is awful",
    "This film is the dullest",
    "The sequel is even worse",
    "Avoid this one:",
    "A dull, lifeless",
    # negative superlatives opening "This is the ...": the instruct model reads them as set phrases and answers in
    # kind ("the most boring part of the job is ..."), which VADER calls neutral, unless trained on them
    "This is the most boring",
    "This is the weakest",
    "This is the silliest",
    "This is the dumbest",
    "This is by far the most tedious",
    "This must be the least funny",
    "This has to be the most pointless",
    "Hands down the most annoying",
    "Without a doubt the most forgettable",
    "It is the stupidest",
    "Quite possibly the ugliest",
    "This is the lamest",
    "Of all the films this year, the poorest",
    "This is the most disappointing",
)
"""``data.extra_prompts: demo-negative``: hand-written negative openings (complaints, negative superlatives) for
training a real model, which the corpus's openings rarely are (it writes "I watched ...", "This film was ...").
None is a held-out evaluation opening, a prefix of one or starts with one; none says "worst" (tests check)."""


@dataclass(frozen=True)
class DemoData:
    """Paths of the demo's data files."""

    corpus_file: Path
    train_prompts_file: Path
    eval_prompts_file: Path

    @classmethod
    def in_folder(cls, root: Path) -> DemoData:
        return cls(root / "corpus.jsonl", root / "train_prompts.txt", root / "eval_prompts.txt")

    def complete(self) -> bool:
        return all(f.is_file() for f in (self.corpus_file, self.train_prompts_file, self.eval_prompts_file))


def write_demo_data(
    out: Path, seed: int, n_reviews: int = N_REVIEWS, n_heldout: int = N_HELDOUT, n_prompts: int = N_TRAIN_PROMPTS
) -> tuple[list[Review], list[Review], list[str]]:
    """Write the three files into ``out``; return (training reviews, held-out reviews, RL prompts). The held-out
    reviews continue the same seeded stream, so they are distinct from the training ones."""
    reviews = generate_reviews(n_reviews + n_heldout, seed)
    train, heldout = reviews[:n_reviews], reviews[n_reviews:]
    prompts = training_prompts(train, seed, n_prompts)
    files = DemoData.in_folder(out)
    with open(files.corpus_file, "w", encoding="utf-8") as f:
        for split, part in (("train", train), ("heldout", heldout)):
            for r in part:
                f.write(json.dumps({"text": r.text, "sentiment": r.sentiment, "split": split}) + "\n")
    _write_lines(files.train_prompts_file, prompts)
    _write_lines(files.eval_prompts_file, EVAL_OPENINGS)
    return train, heldout, prompts


def ensure_demo_data(home: Path | str | None = None, seed: int = 0) -> DemoData:
    """The demo's data files for ``seed``, written on first use (a few seconds)."""
    home = Path(home).expanduser() if home is not None else default_home()

    def build(out: Path) -> None:
        write_demo_data(out, seed)
        (out / "manifest.json").write_text(json.dumps({"version": DATA_VERSION, "seed": seed}) + "\n")

    def complete(root: Path) -> bool:
        try:
            version = json.loads((root / "manifest.json").read_text()).get("version")
        except (OSError, ValueError):
            return False
        return version == DATA_VERSION and DemoData.in_folder(root).complete()

    return DemoData.in_folder(build_once(home / f"demo-data-v{DATA_VERSION}-seed{seed}", build, complete))


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
