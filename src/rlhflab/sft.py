"""Supervised fine-tuning of a causal LM on plain texts, in plain PyTorch (no HF Trainer).

Each text becomes one document ``tokens(text) + [EOS]`` (so the model learns to stop). Documents are either
*padded*: grouped by length into batches, left-padded like RL prompts, loss masked on pads; or *packed*: joined into
one stream ``EOS doc EOS doc EOS ...`` and cut into blocks of exactly ``max_length`` tokens. The loss is the
token-weighted mean negative log-likelihood over every real target token of the accumulated batch: a padded
batch gives exactly the loss of its rows run alone.

Full fine-tuning trains every weight (the random-init demo model); with ``SFTConfig.lora`` only LoRA adapters are
trained (pretrained models such as Pythia). ``run_sft`` loads, trains and saves in one call.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import yaml
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from rlhflab.config import LoraSettings, apply_override, from_dict
from rlhflab.errors import UserError
from rlhflab.models.forward import position_ids
from rlhflab.models.loading import load_causal_lm, load_tokenizer, resolve_device
from rlhflab.outdir import check_output_dir

IGNORE_INDEX = -100


@dataclass
class SFTConfig:
    """Hyper-parameters of ``train_sft``."""

    lr: float = 1e-3
    """Peak learning rate of AdamW (after warm-up, before cosine decay)."""
    epochs: float = 1.0
    """Passes over the data; fractions allowed (1.5 = one and a half passes)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps instead (None: run ``epochs``)."""
    batch_size: int = 16
    """Documents (padded mode) or blocks (packed mode) per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimiser step; the loss is token-weighted over all of them."""
    max_length: int = 128
    """Longest document in tokens (longer ones are truncated) / block length when packing."""
    packing: bool = False
    """Pack documents into full ``max_length`` blocks instead of padding each document."""
    warmup_ratio: float = 0.05
    """Share of the steps spent warming the learning rate up linearly from 0; cosine decay to 0 after."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied to matrices only (not to biases, norms)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value."""
    seed: int = 0
    """Seeds batch order and any dropout."""
    lora: LoraSettings | None = None
    """Train a LoRA adapter with these settings (a dict of its fields also works); None trains every weight."""
    log_every: int = 0
    """Steps between printed loss lines (0: only the progress bar)."""
    device: str = "auto"
    """Where to train: auto, cpu, cuda, cuda:N."""
    progress: bool = True
    """Show a tqdm progress bar with the running loss."""
    eval_batch_size: int = 32
    """Batch size of the perplexity evaluation."""


# ---------------------------------------------------------------------------------------------------------------
# Data: documents, packing, batches


def encode_documents(tokenizer, texts: Sequence[str], max_length: int, add_eos: bool = True) -> list[list[int]]:
    """Token ids of each text (no special tokens added by the tokenizer) + EOS, truncated to ``max_length``."""
    eos = tokenizer.eos_token_id
    ids = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    docs = [(row + [eos] if add_eos else row)[:max_length] for row in ids]
    return [d for d in docs if len(d) >= 2]  # a single token has nothing to predict


def pack_documents(docs: Sequence[Sequence[int]], max_length: int, eos_id: int) -> list[list[int]]:
    """``EOS d1 d2 d3 ...`` (each document already ends with EOS) cut into blocks of exactly ``max_length``.

    The leading EOS means every document, the first included, is predicted from an EOS, as at every later document
    boundary. The tail that does not fill a whole block is dropped.
    """
    stream = [eos_id]
    for doc in docs:
        stream.extend(doc)
    n_blocks = len(stream) // max_length
    return [stream[i * max_length : (i + 1) * max_length] for i in range(n_blocks)]


def collate(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad rows into ``input_ids`` (B, T) and a bool ``attention_mask`` (B, T), True = real token."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = True
    return input_ids, mask


def _length_grouped_batches(docs: Sequence[Sequence[int]], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Indices of ``docs`` in batches of similar length (little padding), in random batch order."""
    order = sorted(range(len(docs)), key=lambda i: (len(docs[i]), rng.random()))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def _batch_stream(
    rows: Sequence[Sequence[int]], cfg: SFTConfig, pad_id: int, rng: random.Random
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless micro-batches, reshuffled every epoch."""
    while True:
        if cfg.packing:  # all blocks have the same length: plain shuffling
            order = list(range(len(rows)))
            rng.shuffle(order)
            batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        else:
            batches = _length_grouped_batches(rows, cfg.batch_size, rng)
        for batch in batches:
            yield collate([rows[i] for i in batch], pad_id)


# ---------------------------------------------------------------------------------------------------------------
# Loss and perplexity


def lm_loss_sum(model: torch.nn.Module, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL over real targets, and how many there are.

    Target ``t`` counts when both it and the token before it (its context position) are real, so pads neither
    predict nor are predicted. Explicit ``position_ids`` make a left-padded row see the same positions as alone.
    """
    logits = model(input_ids=input_ids, attention_mask=mask.long(), position_ids=position_ids(mask)).logits  # (B, T, V)
    targets = input_ids[:, 1:].masked_fill(~(mask[:, 1:] & mask[:, :-1]), IGNORE_INDEX)  # (B, T-1)
    nll = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return nll, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def perplexity(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    batch_size: int = 32,
    max_length: int = 1024,
    add_eos: bool = True,
) -> float:
    """exp(mean NLL per predicted token) of ``text + EOS`` documents, the quantity SFT minimises.

    Each text is scored on its own (left-padded batches; the first token, having no context, is not predicted).
    """
    docs = encode_documents(tokenizer, texts, max_length, add_eos)
    if not docs:
        raise ValueError("perplexity: no text with at least two tokens")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(docs)), key=lambda i: len(docs[i]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        input_ids, mask = collate([docs[i] for i in order[start : start + batch_size]], tokenizer.pad_token_id)
        nll, n = lm_loss_sum(model, input_ids.to(device), mask.to(device))
        total, count = total + float(nll), count + n
    model.train(was_training)
    return math.exp(total / count)


# ---------------------------------------------------------------------------------------------------------------
# Training


def apply_lora(model: torch.nn.Module, lora: LoraSettings) -> torch.nn.Module:
    """Wrap ``model`` in a PEFT ``PeftModel`` whose only trainable weights are the LoRA adapter's."""
    from peft import get_peft_model

    from rlhflab.fastpaths import add_lora_in_place
    from rlhflab.models.loading import lora_config, lora_targets

    targets = lora_targets(model, lora.target_modules, "lora.target_modules")
    model = get_peft_model(model, lora_config(lora.r, lora.alpha, lora.dropout, targets, lora.bias))
    add_lora_in_place(model)
    return model


def _optimizer(model: torch.nn.Module, cfg: SFTConfig) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


def train_sft(
    model: torch.nn.Module, tokenizer, texts: Sequence[str], cfg: SFTConfig, eval_texts: Sequence[str] | None = None
) -> dict:
    """Fine-tune ``model`` on ``texts`` (next-token loss, every document ends with EOS); return stats.

    With ``cfg.lora`` the model is first wrapped by ``apply_lora`` (unless it already is a PEFT model) and only the
    adapter trains. The trained module is ``stats["model"]`` (the PEFT wrapper in LoRA mode, else ``model``
    itself); every other key is JSON-serialisable: ``steps``, ``epochs``, ``tokens``, ``time_s``,
    ``tokens_per_s``, ``trainable_params``, ``loss_first``, ``loss_last`` (mean of the last 10 steps), ``losses``
    (one per step) and, with ``eval_texts``, ``ppl_before`` / ``ppl_after``.
    """
    device = resolve_device(cfg.device)
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    if cfg.lora is not None and not hasattr(model, "peft_config"):
        lora = cfg.lora if isinstance(cfg.lora, LoraSettings) else LoraSettings(**cfg.lora)  # dict from YAML/CLI
        model = apply_lora(model, lora)
    model.to(device)

    docs = encode_documents(tokenizer, texts, cfg.max_length)
    rows = pack_documents(docs, cfg.max_length, tokenizer.eos_token_id) if cfg.packing else docs
    if not rows:
        raise ValueError(
            f"SFT: no training {'blocks' if cfg.packing else 'documents'} "
            f"({len(texts)} texts, max_length {cfg.max_length})"
        )
    steps_per_epoch = math.ceil(math.ceil(len(rows) / cfg.batch_size) / cfg.grad_accum)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * steps_per_epoch))

    stats: dict = {"ppl_before": None, "ppl_after": None}
    if eval_texts:
        stats["ppl_before"] = perplexity(model, tokenizer, eval_texts, cfg.eval_batch_size, cfg.max_length)

    optimizer = _optimizer(model, cfg)
    scheduler = get_cosine_schedule_with_warmup(optimizer, round(cfg.warmup_ratio * total_steps), total_steps)
    batches = _batch_stream(rows, cfg, tokenizer.pad_token_id, rng)
    trainable = [p for p in model.parameters() if p.requires_grad]
    losses: list[float] = []
    n_tokens = 0
    model.train()
    start = time.perf_counter()
    bar = tqdm(range(total_steps), desc="sft", disable=not cfg.progress, dynamic_ncols=True, leave=False)
    for step in bar:
        # 1. fetch the micro-batches of this step; the loss is normalised by their total target count
        micro = [tuple(t.to(device) for t in next(batches)) for _ in range(cfg.grad_accum)]
        step_targets = sum(int((m[:, 1:] & m[:, :-1]).sum()) for _, m in micro)
        # 2. forward / backward, token-weighted over the whole accumulated batch
        step_loss = 0.0
        for input_ids, mask in micro:
            nll, _ = lm_loss_sum(model, input_ids, mask)
            (nll / step_targets).backward()
            step_loss += nll.item() / step_targets
        # 3. clip, step, schedule
        torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # 4. log
        losses.append(step_loss)
        n_tokens += step_targets
        bar.set_postfix(loss=f"{step_loss:.3f}", refresh=False)
        if cfg.log_every and (step + 1) % cfg.log_every == 0:
            tqdm.write(
                f"sft step {step + 1}/{total_steps}  loss {sum(losses[-cfg.log_every :]) / cfg.log_every:.4f}"
                f"  lr {scheduler.get_last_lr()[0]:.2e}"
            )
    bar.close()
    elapsed = time.perf_counter() - start
    model.eval()

    if eval_texts:
        stats["ppl_after"] = perplexity(model, tokenizer, eval_texts, cfg.eval_batch_size, cfg.max_length)
    stats.update(
        steps=total_steps,
        epochs=total_steps / steps_per_epoch,
        tokens=n_tokens,
        time_s=elapsed,
        tokens_per_s=n_tokens / max(elapsed, 1e-9),
        trainable_params=sum(p.numel() for p in trainable),
        loss_first=losses[0],
        loss_last=sum(losses[-10:]) / len(losses[-10:]),
        losses=losses,
        model=model,
    )
    return stats


def is_sft_output(path: Path) -> bool:
    return (path / "sft_stats.json").is_file()


def check_sft_output_dir(output_dir: str | Path, overwrite: bool) -> Path:
    """Refuse an earlier SFT output without ``overwrite``, and any other non-empty directory."""
    return check_output_dir(Path(output_dir), is_sft_output, "an SFT output", overwrite)


def run_sft(
    model_name: str,
    texts: Sequence[str],
    output_dir: str | Path,
    cfg: SFTConfig,
    eval_texts: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict:
    """Load ``model_name`` (hub id or local dir), ``train_sft`` it, save to ``output_dir``; return the stats.

    Saves the LoRA adapter in PEFT format (``PeftModel.from_pretrained(base, output_dir)``) in LoRA mode, the
    full model (safetensors) otherwise, plus the tokenizer and ``sft_stats.json``. An earlier SFT output there is
    replaced only with ``overwrite``; any other non-empty directory is refused (:mod:`rlhflab.outdir`).
    """
    out = check_sft_output_dir(output_dir, overwrite)
    tokenizer = load_tokenizer(model_name)
    model = load_causal_lm(model_name, dtype=torch.float32, device=resolve_device(cfg.device))
    stats = train_sft(model, tokenizer, texts, cfg, eval_texts)
    trained = stats.pop("model")
    if overwrite and out.exists():
        shutil.rmtree(out)  # check_sft_output_dir made sure it is an earlier SFT output
    out.mkdir(parents=True, exist_ok=True)
    trained.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {k: v for k, v in stats.items() if k != "losses"} | {"base_model": model_name, "config": asdict(cfg)}
    (out / "sft_stats.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return stats


# ---------------------------------------------------------------------------------------------------------------
# Recipes: an SFT preset or YAML file = model + documents + SFTConfig


@dataclass
class SFTData:
    source: Literal["imdb", "file"] = "file"
    """imdb: whole cleaned IMDB reviews through `datasets`; file: text (one document per line) or JSONL ('text')."""
    split: str = "train[:2000]"
    """The `datasets` split of stanfordnlp/imdb (source imdb)."""
    file: str | None = None
    """The documents (source file)."""


@dataclass
class SFTRecipe:
    model: str = ""
    """Base model to fine-tune: a hub id or a local directory."""
    output_dir: str | None = None
    """Where the adapter (LoRA) or the full model is saved, with the tokenizer and sft_stats.json."""
    data: SFTData = field(default_factory=SFTData)
    sft: SFTConfig = field(default_factory=SFTConfig)


def sft_preset_names() -> list[str]:
    folder = resources.files("rlhflab.presets").joinpath("sft")
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def build_recipe(preset: str, overrides: Sequence[str] = ()) -> SFTRecipe:
    """An SFT preset with ``--set`` overrides (``sft.lr=3e-4``, ``data.file=F``), checked like training configs."""
    names = sft_preset_names()
    if preset not in names:
        raise UserError(f"unknown SFT preset {preset!r}; available: {', '.join(names)}")
    text = resources.files("rlhflab.presets").joinpath("sft").joinpath(f"{preset}.yaml").read_text()
    data = yaml.safe_load(text)
    for assignment in overrides:
        apply_override(data, assignment)
    recipe = from_dict(SFTRecipe, data)
    if recipe.data.source == "file" and not recipe.data.file:
        raise UserError("data.file: required when data.source is 'file'")
    for key in ("batch_size", "grad_accum", "max_length"):
        if getattr(recipe.sft, key) <= 0:
            raise UserError(f"sft.{key}: must be a positive integer, got {getattr(recipe.sft, key)}")
    return recipe


def recipe_texts(recipe: SFTRecipe) -> list[str]:
    if recipe.data.source == "imdb":
        from rlhflab.data.imdb import imdb_texts

        return imdb_texts(recipe.data.split)
    from rlhflab.data.prompts import read_prompts

    return read_prompts(recipe.data.file, "data.file")
