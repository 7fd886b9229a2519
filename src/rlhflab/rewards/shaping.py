"""Shaping terms of the reference IMDB run, on the completion's whitespace-separated words."""

from __future__ import annotations


def repetition(completions: list[str]) -> list[float]:
    """unique words / words of each completion (1 = no repeats; 0 for an empty completion)."""
    out = []
    for text in completions:
        words = text.split()
        out.append(len(set(words)) / len(words) if words else 0.0)
    return out


def short(completions: list[str], min_words: int = 5) -> list[float]:
    """-1 when a completion has fewer than ``min_words`` words, else 0 (weight 2 gives the reference's -2)."""
    return [-1.0 if len(text.split()) < min_words else 0.0 for text in completions]
