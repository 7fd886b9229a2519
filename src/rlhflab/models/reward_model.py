"""A learned reward model: a causal LM with a LoRA adapter and a scalar head, the PPO critic's machinery.

The score of a text is the head (fp32, zero-initialised like the value head) applied to the last hidden state of
``text + EOS``: the state that has read the whole text. Texts are left-padded with explicit position ids, so the last
position is every row's own end and a row scores the same alone or in a batch. A text longer than ``max_length``
tokens keeps its *end* (the answer the score is about).

Saved as the adapter in PEFT format (``PeftModel.from_pretrained(base, dir)``), ``reward_head.safetensors``, the
tokenizer (the reward model scores with its own, whatever the policy's) and ``reward_model.json`` (base model, max
length), which :meth:`RewardModel.load` reads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from rlhflab.config import LoraSettings
from rlhflab.errors import UserError
from rlhflab.models.forward import position_ids
from rlhflab.models.loading import backbone, load_causal_lm, load_tokenizer, lora_config, lora_targets, resolve_device
from rlhflab.models.roles import value_head_width

HEAD_FILE, META_FILE = "reward_head.safetensors", "reward_model.json"


def encode_texts(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``[BOS] + tokens(text) + [EOS]`` rows (B, L) and their bool mask (B, L), True = real token; a
    BOS only for tokenizers that add one themselves (Llama); at most ``max_length`` tokens, the end kept."""
    from rlhflab.rollout import adds_bos

    bos, eos = adds_bos(tokenizer), tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        ids = ([bos] if bos is not None else []) + ids + [eos]
        rows.append(ids[-max_length:])
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids)
        mask[i, width - len(ids) :] = True
    return input_ids, mask


class RewardModel(torch.nn.Module):
    """``model`` (a PeftModel whose active adapter is the reward model's) + ``head`` (H → 1)."""

    def __init__(self, model: PeftModel, head: torch.nn.Linear, tokenizer, max_length: int):
        super().__init__()
        self.model, self.head, self.tokenizer, self.max_length = model, head, tokenizer, max_length

    @classmethod
    def create(cls, base: torch.nn.Module, lora: LoraSettings, tokenizer, max_length: int) -> RewardModel:
        """A fresh reward model on ``base`` (its weights stay frozen): LoRA per ``lora``, zero head (scores 0)."""
        targets = lora_targets(base, lora.target_modules, "lora.target_modules")
        model = get_peft_model(base, lora_config(lora.r, lora.alpha, lora.dropout, targets, lora.bias))
        device = next(base.parameters()).device
        head = torch.nn.Linear(value_head_width(base), 1, device=device, dtype=torch.float32)
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
        return cls(model, head, tokenizer, max_length)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA matrices and the head; never the base weights."""
        return [p for n, p in self.model.named_parameters() if "lora_" in n] + list(self.head.parameters())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of left-padded rows (B, L): the head on each row's last hidden state."""
        hidden = backbone(self.model)(
            input_ids=input_ids,
            attention_mask=attention_mask.long(),
            position_ids=position_ids(attention_mask),
            use_cache=False,
        ).last_hidden_state  # (B, L, H)
        return self.head(hidden[:, -1].float()).squeeze(-1)  # (B,)

    def score_texts(self, texts: list[str]) -> torch.Tensor:
        """Scores (B,) of texts, encoded by :func:`encode_texts` (gradients flow when enabled)."""
        input_ids, mask = encode_texts(self.tokenizer, texts, self.max_length)
        device = self.head.weight.device
        return self(input_ids.to(device), mask.to(device))

    def save(self, directory: Path, base_model: str, sft_adapter: str | None = None) -> None:
        """Adapter (PEFT format), head (safetensors), tokenizer and ``reward_model.json`` into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(directory))
        save_file({k: v.detach().contiguous() for k, v in self.head.state_dict().items()}, str(directory / HEAD_FILE))
        self.tokenizer.save_pretrained(str(directory))
        meta = {"base_model": base_model, "sft_adapter": sft_adapter, "max_length": self.max_length, "format": 1}
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", key: str = "reward_model.path") -> RewardModel:
        """A reward model saved by :meth:`save`, from its directory or from the run directory holding ``final/``."""
        directory = Path(path).expanduser()
        if (directory / "final" / META_FILE).is_file():
            directory = directory / "final"
        if not (directory / META_FILE).is_file():
            raise UserError(
                f"{key}: {str(path)!r} holds no reward model ({META_FILE}); give the run directory of `rlhflab rm`"
            )
        meta = json.loads((directory / META_FILE).read_text())
        base_name = resolve_base(meta["base_model"])
        target = resolve_device(device)
        base = load_causal_lm(base_name, torch.float32, target, key=f"{key} (base model)")
        if meta.get("sft_adapter"):
            from rlhflab.models.loading import merge_adapter

            base = merge_adapter(base, meta["sft_adapter"], key=f"{key} (sft adapter)")
        base.requires_grad_(False)
        model = PeftModel.from_pretrained(base, str(directory)).eval()
        head = torch.nn.Linear(value_head_width(base), 1, device=target, dtype=torch.float32)
        head.load_state_dict(load_file(str(directory / HEAD_FILE)))
        head.requires_grad_(False)
        tokenizer = load_tokenizer(str(directory), key=key)
        return cls(model, head, tokenizer, int(meta["max_length"])).eval()


def resolve_base(name: str) -> str:
    """A config's ``model.name`` → what ``from_pretrained`` loads ('demo' and 'smollm2-135m' are built once)."""
    if name == "demo":
        from rlhflab.models.tiny import ensure_demo_assets

        return str(ensure_demo_assets().model_dir)
    from rlhflab.models.smollm2 import resolve_model_name

    return resolve_model_name(name)


class RewardModelJudge:
    """A reward component: the reward model's score of ``prompt + completion``, ``batch_size`` texts a pass."""

    def __init__(self, path: str, device: str = "auto", batch_size: int = 32, key: str = "reward_model.path"):
        self.model = RewardModel.load(path, device, key)
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions)]
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            out += self.model.score_texts(texts[start : start + self.batch_size]).tolist()
        return out
