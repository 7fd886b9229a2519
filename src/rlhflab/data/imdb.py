"""IMDB review openings as prompts (the reference run): cleaned text, first N words."""

from __future__ import annotations

import re

from rlhflab.errors import UserError

_BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)
_DASHES = re.compile(r"-{2,}")
_SPACES = re.compile(r"\s+")


def clean_review(text: str) -> str:
    """Remove ``<br />`` tags, collapse runs of '-' to one and runs of whitespace to one space."""
    text = _BREAKS.sub(" ", text)
    text = _DASHES.sub("-", text)
    return _SPACES.sub(" ", text).strip()


def opening(text: str, n_words: int) -> str:
    """The first ``n_words`` words of a cleaned review."""
    return " ".join(clean_review(text).split(" ")[:n_words])


def imdb_prompts(split: str = "train[:300]", n_words: int = 10, dataset: str = "stanfordnlp/imdb") -> list[str]:
    """Openings of IMDB reviews through ``datasets``; a clear error when it or the hub is unavailable."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(
            "data.source=imdb needs the 'datasets' package: pip install 'rlhflab[data]', or give "
            "your own prompts with data.source=file and data.prompts_file=FILE"
        ) from None
    try:
        rows = load_dataset(dataset, split=split)
    except Exception as err:  # datasets raises many kinds of network / hub errors
        raise UserError(
            f"data.source=imdb: cannot load {dataset!r} split {split!r} from the Hugging Face hub "
            f"({type(err).__name__}); without hub access, use data.source=file with "
            f"data.prompts_file=FILE (one prompt per line)"
        ) from None
    return [opening(row["text"], n_words) for row in rows]
