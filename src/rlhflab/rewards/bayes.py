"""A second, independent sentiment judge: multinomial naive Bayes on word counts, fitted to labelled reviews.

It learns which words the corpus's positive and negative reviews use, not VADER's lexicon, so a policy that games
VADER (a salad of lexicon adjectives, odd negations) is not automatically rewarded by it. Score = the log-odds
log P(positive | text) − log P(negative | text); > 0 reads as positive.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from rlhflab.errors import UserError

WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class NaiveBayesSentiment:
    """Laplace-smoothed (α = 1) multinomial naive Bayes over 'positive' vs 'negative' texts."""

    def __init__(self, texts: list[str], labels: list[str]):
        counts = {"positive": Counter(), "negative": Counter()}
        docs = Counter()
        for text, label in zip(texts, labels):
            if label in counts:
                counts[label].update(words(text))
                docs[label] += 1
        if not docs["positive"] or not docs["negative"]:
            raise UserError("naive_bayes judge: needs both positive and negative labelled texts")
        vocab = set(counts["positive"]) | set(counts["negative"])
        totals = {label: sum(c.values()) + len(vocab) for label, c in counts.items()}
        # per-word log-likelihood ratio; words never seen in training carry no evidence
        self.llr = {
            w: math.log((counts["positive"][w] + 1) / totals["positive"])
            - math.log((counts["negative"][w] + 1) / totals["negative"])
            for w in vocab
        }
        self.prior = math.log(docs["positive"] / docs["negative"])

    def __call__(self, texts: list[str]) -> list[float]:
        return [self.prior + sum(self.llr.get(w, 0.0) for w in words(text)) for text in texts]

    @classmethod
    def from_jsonl(cls, path: str | Path, key: str = "model") -> NaiveBayesSentiment:
        """Fit on a JSONL file of {"text": ..., "sentiment": "positive" | "negative" | ...} rows."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise UserError(f"{key}: labelled corpus {str(path)!r} does not exist")
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if r.get("split", "train") == "train"]
        return cls([r["text"] for r in rows], [r.get("sentiment", "") for r in rows])
