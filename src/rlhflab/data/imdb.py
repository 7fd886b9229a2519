"""IMDB review openings as prompts (the reference run): cleaned text, first N words."""

from __future__ import annotations

import re

from rlhflab.errors import UserError

_BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)
_DASHES = re.compile(r"-{2,}")
_SPACES = re.compile(r"\s+")
WAY_OUT = "use data.source=file with data.prompts_file=FILE (one prompt per line)"


def clean_review(text: str) -> str:
    """Remove ``<br />`` tags, collapse runs of '-' to one and runs of whitespace to one space."""
    text = _BREAKS.sub(" ", text)
    text = _DASHES.sub("-", text)
    return _SPACES.sub(" ", text).strip()


def opening(text: str, n_words: int) -> str:
    """The first ``n_words`` words of a cleaned review."""
    return " ".join(clean_review(text).split(" ")[:n_words])


def load_imdb(split: str, dataset: str = "stanfordnlp/imdb", way_out: str = WAY_OUT) -> list[str]:
    """The raw review texts of an IMDB split through ``datasets``; a clear error when it or the hub is unavailable."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise UserError(f"IMDB needs the 'datasets' package: pip install 'rlhflab[data]', or {way_out}") from None
    try:
        rows = load_dataset(dataset, split=split)
    except Exception as err:  # datasets raises many kinds of network / hub errors
        raise UserError(
            f"cannot load {dataset!r} split {split!r} from the Hugging Face hub ({type(err).__name__}); "
            f"without hub access, {way_out}"
        ) from None
    return [row["text"] for row in rows]


def imdb_prompts(split: str = "train[:300]", n_words: int = 10, dataset: str = "stanfordnlp/imdb") -> list[str]:
    """Openings of IMDB reviews (``data.source=imdb`` of training)."""
    return [opening(text, n_words) for text in load_imdb(split, dataset)]


def imdb_texts(split: str = "train[:2000]", dataset: str = "stanfordnlp/imdb") -> list[str]:
    """Whole cleaned IMDB reviews: the documents of the SFT stage."""
    way_out = "give your own documents with --set data.source=file --set data.file=FILE (one per line)"
    return [clean_review(text) for text in load_imdb(split, dataset, way_out)]
