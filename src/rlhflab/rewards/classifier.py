"""A Hugging Face sequence classifier as judge, with its *own* tokenizer (it need not share the policy's)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhflab.errors import UserError
from rlhflab.models.loading import resolve_device


def find_label(id2label: dict, wanted: str, key: str) -> int:
    """Index of label ``wanted`` by name (case-insensitive) -- never a guessed index."""
    for index, name in id2label.items():
        if str(name).lower() == wanted.lower():
            return int(index)
    labels = ", ".join(f"{i}={n}" for i, n in sorted(id2label.items(), key=lambda kv: int(kv[0])))
    raise UserError(f"{key}: the classifier has no label {wanted!r}; its labels are {labels}")


class ClassifierReward:
    """Score = the ``label`` logit (or softmax probability) of each text, batched, truncated to the model's max."""

    def __init__(
        self,
        model: str,
        label: str = "POSITIVE",
        output: str = "logit",
        device: str = "auto",
        batch_size: int = 32,
        trust_remote_code: bool = False,
        key: str = "reward.components.model",
    ):
        source = str(Path(model).expanduser()) if Path(model).expanduser().is_dir() else model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
            self.model = AutoModelForSequenceClassification.from_pretrained(source, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise UserError(f"{key}: cannot load classifier {model!r} ({str(err).splitlines()[0]})") from None
        self.device = resolve_device(device)
        self.model.to(self.device).eval()
        self.index = find_label(self.model.config.id2label, label, key)
        self.output, self.batch_size = output, batch_size
        limit = getattr(self.model.config, "max_position_embeddings", None) or self.tokenizer.model_max_length
        self.max_length = min(limit, self.tokenizer.model_max_length)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=self.max_length,
            ).to(self.device)
            logits = self.model(**enc).logits.float()  # (b, num_labels)
            values = logits.softmax(-1) if self.output == "probability" else logits
            scores += values[:, self.index].tolist()
        return scores
