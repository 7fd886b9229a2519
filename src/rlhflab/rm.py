"""``rlhflab rm``: train a reward model (LoRA + scalar head) on preference pairs with the Bradley–Terry loss.

The loop: pairs → scores of ``prompt + chosen`` and ``prompt + rejected`` (one forward of 2b rows) → loss
(:func:`rlhflab.algorithms.preference.bradley_terry_loss`) → AdamW step → log; every ``preference.eval_every``
steps the held-out pairs are scored (loss, pairwise accuracy, mean margin: the accuracy curve in metrics.jsonl).

The run directory: ``config.yaml``, ``metrics.jsonl``, ``final/`` (adapter in PEFT format,
``reward_head.safetensors``, tokenizer, ``reward_model.json``, README.md model card) and ``eval/summary.json``
(held-out loss / accuracy / margin before and after training). ``reward.components: [{kind: reward_model, path:
RUN_DIR}]`` then uses it as a reward.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from rlhflab.algorithms.preference import bradley_terry_loss
from rlhflab.config import Config
from rlhflab.data.preferences import PreferencePair
from rlhflab.data.prompts import PromptSampler
from rlhflab.errors import UserError
from rlhflab.models.loading import (
    hidden_size,
    load_causal_lm,
    load_tokenizer,
    merge_adapter,
    resolve_device,
    resolve_dtype,
)
from rlhflab.models.reward_model import RewardModel, resolve_base
from rlhflab.pairwise import StepLog, chunks, load_pairs
from rlhflab.schedule import build_scheduler
from rlhflab.session import check_run_dir, prepare_run_dir, seed_everything


def pair_scores(rm: RewardModel, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (b,) of each pair's chosen and rejected text, from one forward of the 2b texts."""
    texts = [p.prompt + p.chosen for p in pairs] + [p.prompt + p.rejected for p in pairs]
    scores = rm.score_texts(texts)  # (2b,)
    return scores[: len(pairs)], scores[len(pairs) :]


@torch.no_grad()
def evaluate_pairs(rm: RewardModel, pairs: list[PreferencePair], cfg: Config) -> dict[str, float]:
    """Held-out loss, pairwise accuracy (share of pairs with r_chosen > r_rejected) and mean margin."""
    if not pairs:
        return {}
    was_training = rm.model.training
    rm.model.eval()
    chosen, rejected = [], []
    for part in chunks(pairs, cfg.train.scoring_batch_size):
        c, r = pair_scores(rm, part)
        chosen.append(c)
        rejected.append(r)
    p = cfg.preference
    loss, stats = bradley_terry_loss(torch.cat(chosen), torch.cat(rejected), p.margin, p.center_rewards_coefficient)
    rm.model.train(was_training)
    return {
        "loss": loss.item(),
        "accuracy": stats["accuracy"].item(),
        "margin": stats["margin"].item(),
        "num_pairs": len(pairs),
    }


def train_reward_model(cfg: Config, overwrite: bool = False) -> Path:
    """Train per ``cfg`` (algorithm.name rm) and write the run directory; returns its path."""
    p, t = cfg.preference, cfg.train
    run_dir = check_run_dir(cfg, overwrite)
    seed_everything(cfg.seed)
    model_name = resolve_base(cfg.model.name)
    device = resolve_device(cfg.model.device)
    width = hidden_size(model_name, cfg.model.trust_remote_code) if cfg.model.dtype == "auto" else None
    dtype = resolve_dtype(cfg.model.dtype, device, width)
    tokenizer = load_tokenizer(model_name, cfg.model.trust_remote_code)
    train_pairs, eval_pairs, _ = load_pairs(cfg, tokenizer)  # a bad file fails before the model loads
    base = load_causal_lm(model_name, dtype, device, cfg.model.trust_remote_code)
    if cfg.model.sft_adapter:
        base = merge_adapter(base, cfg.model.sft_adapter)
    base.requires_grad_(False)
    rm = RewardModel.create(base, cfg.lora, tokenizer, p.max_length)
    rm.model.train(t.dropout)  # off by default: the same text always gets the same score
    prepare_run_dir(cfg, overwrite)
    print(
        f"reward model: {len(train_pairs)} training pairs, {len(eval_pairs)} held out; "
        f"{t.steps} steps of {p.batch_size}"
    )

    params = rm.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, int(t.warmup_ratio * t.steps), t.steps, t.lr_schedule)
    sampler = PromptSampler(train_pairs, cfg.seed)  # shuffled passes over the pairs
    before = evaluate_pairs(rm, eval_pairs, cfg)
    log = StepLog(run_dir, t.steps, 0, "rm", ("loss", "rewards/accuracies", "eval/accuracy"), cfg.tracking.progress)
    bad_in_a_row = 0
    for step in range(1, t.steps + 1):
        started = time.perf_counter()
        # 1. this step's pairs; 2. the loss of each micro-batch, weighted by its share of the pairs
        pairs = sampler.next(p.batch_size)
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0, "chosen": 0.0, "rejected": 0.0}
        for part in chunks(pairs, t.micro_batch_size):
            chosen, rejected = pair_scores(rm, part)
            loss, stats = bradley_terry_loss(chosen, rejected, p.margin, p.center_rewards_coefficient)
            share = len(part) / len(pairs)
            (loss * share).backward()
            sums["loss"] += loss.item() * share
            for key, value in stats.items():
                sums[key] += value.item() * share
        # 3. clip, step (a non-finite gradient is skipped), schedule
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm).item()
        if math.isfinite(grad_norm):
            optimizer.step()
            bad_in_a_row = 0
        else:
            bad_in_a_row += 1
            if bad_in_a_row >= t.max_nonfinite_in_a_row:
                log.close()
                raise UserError(
                    f"rm: stopped at step {step}: {bad_in_a_row} non-finite gradients in a row; lower train.lr"
                )
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        # 4. log; the held-out pairs every preference.eval_every steps and at the end
        metrics = {
            "step": step,
            "loss": sums["loss"],
            "rewards/chosen": sums["chosen"],
            "rewards/rejected": sums["rejected"],
            "rewards/accuracies": sums["accuracy"],
            "rewards/margins": sums["margin"],
            "grad_norm": grad_norm,
            "lr": lr,
            "time/step": time.perf_counter() - started,
        }
        if step == t.steps or (p.eval_every and step % p.eval_every == 0):
            metrics |= {f"eval/{k}": v for k, v in evaluate_pairs(rm, eval_pairs, cfg).items() if k != "num_pairs"}
        log.log(metrics)
    log.close()

    after = evaluate_pairs(rm, eval_pairs, cfg)
    rm.save(run_dir / "final", cfg.model.name, cfg.model.sft_adapter)
    (run_dir / "eval").mkdir(exist_ok=True)
    summary = {"before": before, "after": after}
    (run_dir / "eval" / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (run_dir / "final" / "README.md").write_text(model_card(cfg, summary, len(train_pairs)))
    if after:
        print(
            f"held-out pairs ({after['num_pairs']}): accuracy {before['accuracy']:.1%} -> {after['accuracy']:.1%}, "
            f"loss {before['loss']:.3f} -> {after['loss']:.3f}, mean margin {after['margin']:+.2f}"
        )
    print(
        f"reward model saved in {run_dir / 'final'}; use it with "
        f"reward.components: [{{kind: reward_model, path: {run_dir}}}]"
    )
    return run_dir


def model_card(cfg: Config, summary: dict, n_train: int) -> str:
    """final/README.md: what the reward model is, how it was trained, how well it ranks held-out pairs."""
    p, t, after = cfg.preference, cfg.train, summary.get("after") or {}
    source = p.file if p.file else f"{p.dataset} [{p.dataset_split}]"
    lines = [
        "---",
        "library_name: peft",
        f"base_model: {cfg.model.name}",
        "tags: [rlhflab, reward-model, lora]",
        "---",
        "",
        f"# Reward model on `{cfg.model.name}` (rlhflab rm)",
        "",
        "A LoRA adapter plus a scalar head (`reward_head.safetensors`, H -> 1) on the last hidden state of "
        "`prompt + answer + EOS`, trained with the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected"
        + (f" - {p.margin}" if p.margin else "")
        + ")"
        + (
            f" + {p.center_rewards_coefficient} * mean (r_chosen + r_rejected)^2"
            if p.center_rewards_coefficient
            else ""
        )
        + ".",
        "",
        f"- pairs: {source}, {n_train} for training; {t.steps} steps of {p.batch_size} pairs, lr {t.lr}, "
        f"seed {cfg.seed}",
        f"- LoRA r {cfg.lora.r}, alpha {cfg.lora.alpha}; texts of at most {p.max_length} tokens (the end kept)",
    ]
    if after:
        before = summary["before"]
        lines += [
            "",
            f"| held-out pairs ({after['num_pairs']}) | before | after |",
            "| --- | --- | --- |",
            f"| pairwise accuracy | {before['accuracy']:.1%} | {after['accuracy']:.1%} |",
            f"| loss | {before['loss']:.3f} | {after['loss']:.3f} |",
            f"| mean margin r_chosen - r_rejected | {before['margin']:+.3f} | {after['margin']:+.3f} |",
        ]
    lines += [
        "",
        "Use it as a reward: `reward.components: [{kind: reward_model, path: <this run directory>}]`; or load it with "
        "`rlhflab.models.reward_model.RewardModel.load(path)`.",
        "",
    ]
    return "\n".join(lines)
