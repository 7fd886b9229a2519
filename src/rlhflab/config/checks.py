"""Cross-field checks of a config: each failure raises :class:`UserError` with one line naming the keys involved."""

from __future__ import annotations

import math

from rlhflab.config.schema import Config
from rlhflab.errors import UserError


def validate(cfg: Config) -> None:
    """Cross-field checks; each failure names the keys involved."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    r, t, a = cfg.rollout, cfg.train, cfg.algorithm
    for key, value in [
        ("rollout.batch_size", r.batch_size),
        ("rollout.samples_per_prompt", r.samples_per_prompt),
        ("rollout.max_new_tokens", r.max_new_tokens),
        ("train.steps", t.steps),
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.scoring_batch_size", t.scoring_batch_size),
        ("algorithm.ppo_epochs", a.ppo_epochs),
        ("algorithm.num_minibatches", a.num_minibatches),
        ("lora.r", cfg.lora.r),
        ("critic.r", cfg.critic.r),
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("eval.max_prompts", cfg.eval.max_prompts),
        ("eval.samples_per_prompt", cfg.eval.samples_per_prompt),
        ("eval.batch_size", cfg.eval.batch_size or 1),  # 0 = rollout.batch_size
        ("train.max_nonfinite_in_a_row", t.max_nonfinite_in_a_row),
        ("checkpoint.keep", cfg.checkpoint.keep),
    ]:
        need(value > 0, f"{key}: must be a positive integer, got {value}")
    need(
        cfg.data.max_prompts >= 0,
        f"data.max_prompts: must be 0 (all) or a positive integer, got {cfg.data.max_prompts}",
    )
    for key, value in [
        ("train.lr", t.lr),
        ("rollout.temperature", r.temperature),
        ("rollout.top_p", r.top_p),
        ("algorithm.clip_eps", a.clip_eps),
        ("algorithm.clip_eps_value", a.clip_eps_value),
    ]:
        need(value > 0, f"{key}: must be > 0, got {value}")
    e = cfg.eval
    need(e.every >= 0, f"eval.every: must be 0 (off) or a positive integer, got {e.every}")
    need(
        e.samples_per_listed_prompt >= 0,
        f"eval.samples_per_listed_prompt: must be 0 (= eval.samples_per_prompt) or a positive integer, "
        f"got {e.samples_per_listed_prompt}",
    )
    if e.stop_share is not None:
        need(0 < e.stop_share <= 1, f"eval.stop_share: must be in (0, 1] (or null = off), got {e.stop_share}")
        need(e.every > 0, "eval.stop_share: needs eval.every > 0 (the periodic evaluation it reads)")
    need(r.top_p <= 1, f"rollout.top_p: must be in (0, 1], got {r.top_p}")
    need(r.top_k >= 0, f"rollout.top_k: must be >= 0 (0 = off), got {r.top_k}")
    need(0 <= t.warmup_ratio < 1, f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    need(a.kl_coef >= 0, f"algorithm.kl_coef: must be >= 0, got {a.kl_coef}")
    need(a.target_kl is None or a.target_kl > 0, f"algorithm.target_kl: must be > 0 (or null = off), got {a.target_kl}")
    need(
        cfg.lora.bias == "none",
        f"lora.bias: {cfg.lora.bias!r} is not supported, only 'none' (biases are not trained, and a trained bias "
        "would also move the shared reference model)",
    )
    need(
        0 <= a.gamma <= 1 and 0 <= a.gae_lambda <= 1,
        f"algorithm.gamma / algorithm.gae_lambda: must be in [0, 1], got {a.gamma} / {a.gae_lambda}",
    )
    need(
        r.batch_size % r.samples_per_prompt == 0,
        f"rollout.batch_size ({r.batch_size}) must be divisible by rollout.samples_per_prompt ({r.samples_per_prompt})",
    )
    need(
        r.batch_size % a.num_minibatches == 0,
        f"rollout.batch_size ({r.batch_size}) must be divisible by algorithm.num_minibatches ({a.num_minibatches})",
    )
    minibatch = r.batch_size // a.num_minibatches
    need(
        minibatch % t.micro_batch_size == 0,
        f"minibatch size rollout.batch_size / algorithm.num_minibatches = {minibatch} must be divisible by "
        f"train.micro_batch_size ({t.micro_batch_size})",
    )
    need(
        a.name in ("ppo", "dpo", "rm") or r.samples_per_prompt >= 2,
        f"rollout.samples_per_prompt: {a.name} compares samples of one prompt, so it needs >= 2, "
        f"got {r.samples_per_prompt}",
    )
    for key, targets in (
        ("lora.target_modules", cfg.lora.target_modules),
        ("critic.target_modules", cfg.critic.target_modules),
    ):
        need(
            targets == "auto" or (isinstance(targets, list) and len(targets) > 0),
            f"{key}: expected auto or a non-empty list of module names, got {targets!r}",
        )
    need(len(cfg.reward.components) > 0, "reward.components: at least one reward component is needed")
    penalty = cfg.reward.missing_eos_penalty
    need(penalty is None or penalty >= 0, f"reward.missing_eos_penalty: must be >= 0 (or null = off), got {penalty}")
    need(
        not r.mask_truncated_completions or a.name != "ppo",
        "rollout.mask_truncated_completions: supported for rloo and grpo only (PPO's critic learns from every row)",
    )
    for c in cfg.reward.components + cfg.eval.judges:
        need(
            c.kind != "callable" or bool(c.function and ":" in c.function),
            f"reward.components: {c.name!r} of kind callable needs function: 'module:function'",
        )
        need(
            c.kind != "reward_model" or bool(c.path),
            f"reward.components: {c.name!r} of kind reward_model needs path: the run directory of `rlhflab rm`",
        )
        need(
            c.cap is None or math.isfinite(c.cap),
            f"reward.components: {c.name!r} cap must be a finite number (or null = no cap), got {c.cap}",
        )
    p = cfg.preference
    if a.name in ("dpo", "rm"):
        need(
            bool(p.file) != bool(p.dataset),
            f"preference.file / preference.dataset: algorithm {a.name} needs exactly one source of pairs",
        )
        need(0 <= p.eval_share < 1, f"preference.eval_share: must be in [0, 1), got {p.eval_share}")
        for key, value in [
            ("preference.batch_size", p.batch_size),
            ("preference.max_length", p.max_length),
            ("preference.max_eval_pairs", p.max_eval_pairs),
        ]:
            need(value > 0, f"{key}: must be a positive integer, got {value}")
        need(
            p.batch_size % t.micro_batch_size == 0,
            f"preference.batch_size ({p.batch_size}) must be divisible by train.micro_batch_size "
            f"({t.micro_batch_size})",
        )
        need(p.beta > 0, f"preference.beta: must be > 0, got {p.beta}")
        need(p.eval_every >= 0, f"preference.eval_every: must be >= 0, got {p.eval_every}")
    names = [c.name for c in cfg.reward.components]
    need(len(set(names)) == len(names), f"reward.components: names must be unique, got {names}")
    need(
        cfg.data.source != "file" or bool(cfg.data.prompts_file),
        "data.prompts_file: required when data.source is 'file'",
    )
    need(cfg.checkpoint.every >= 0, f"checkpoint.every: must be >= 0, got {cfg.checkpoint.every}")
    need(
        not cfg.distributed.fsdp or cfg.model.roles == "shared",
        "distributed.fsdp: needs model.roles=shared (one base model to shard for the three roles)",
    )
    need(
        not (cfg.distributed.fsdp and t.activation_checkpointing != "none"),
        "train.activation_checkpointing: not supported together with distributed.fsdp yet (untested); turn one off",
    )
    for other, on in (
        ("train.activation_checkpointing", t.activation_checkpointing != "none"),
        ("distributed.fsdp", cfg.distributed.fsdp),
    ):
        need(not (t.compile and on), f"train.compile: not supported together with {other} yet (untested); turn one off")
    tr = cfg.tracking
    need(tr.samples_every >= 0, f"tracking.samples_every: must be >= 0 (0 = never), got {tr.samples_every}")
    need(tr.samples_count > 0, f"tracking.samples_count: must be a positive integer, got {tr.samples_count}")
