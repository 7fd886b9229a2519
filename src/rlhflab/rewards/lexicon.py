"""VADER (Hutto & Gilbert 2014): a rule-based sentiment lexicon that ships with its package, so it runs offline."""

from __future__ import annotations

from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


class VaderReward:
    """Compound sentiment score in [-1, 1] of each text (positive > 0.05, negative < -0.05 by VADER's convention)."""

    def __init__(self) -> None:
        self._analyzer = SentimentIntensityAnalyzer()

    def __call__(self, texts: list[str]) -> list[float]:
        return [self._analyzer.polarity_scores(text)["compound"] for text in texts]
