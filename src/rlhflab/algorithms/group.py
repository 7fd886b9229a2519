"""RLOO and GRPO glue on the PPO engine: sequence-level advantages from k samples per prompt, no critic.

What β (``algorithm.kl_coef``) means differs per algorithm (the formulas live in advantages.py / losses.py):
- rloo: R_i = score_i − β · Σ_t k1_t is the sequence reward; A_i = R_i − mean_{j≠i} R_j (or another baseline).
- grpo: A_i = (score_i − mean_group) / (std_group + ε); β · k3_t is added per token inside the loss.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from rlhflab.algorithms.advantages import group_norm, rloo, token_rewards
from rlhflab.algorithms.losses import grpo_loss, ppo_policy_loss
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.models.roles import Roles
from rlhflab.ops import masked_mean, masked_sum, masked_whiten
from rlhflab.rollout import Rollout, response_logprobs


def group_advantages(
    rollout: Rollout, cfg: Config, kl_coef: float, dist: Dist = SINGLE
) -> tuple[Rollout, dict[str, float]]:
    """(B, 1) advantages, one per completion; rows of a prompt's k samples are contiguous.

    Under data parallelism (``dist``) a prompt's k samples live on one process, so group statistics stay local;
    the ``batch_mean`` baseline, the whitening and the stats use the global batch."""
    a, k = cfg.algorithm, cfg.rollout.samples_per_prompt
    if a.name == "rloo":
        rewards, _ = token_rewards(
            rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.response_mask, kl_coef
        )  # (B, T)
        sequence_reward = rewards.sum(1)  # (B,) = score − β Σ_t k1_t
        global_mean = None  # under data parallelism the batch mean is over every process's rows
        if a.rloo_baseline == "batch_mean" and dist.enabled:
            global_mean = masked_mean(sequence_reward, every_row(sequence_reward), reduce_sum=dist.sum)
        advantages = rloo(sequence_reward, k, a.rloo_baseline, batch_mean=global_mean)
    else:
        sequence_reward = rollout.scores
        advantages = group_norm(rollout.scores, k, scale=a.group_scale)
    advantages = advantages[:, None]  # (B, 1)
    if a.whitens():
        advantages = masked_whiten(advantages, every_row(advantages), reduce_sum=dist.reduce_sum)
    if dist.enabled:
        stats = {"returns/mean": masked_mean(sequence_reward, every_row(sequence_reward), reduce_sum=dist.sum).item()}
    else:
        stats = {"returns/mean": sequence_reward.mean().item()}
    return replace(rollout, advantages=advantages), stats


def every_row(x: torch.Tensor) -> torch.Tensor:
    """An all-True mask shaped like ``x``."""
    return torch.ones_like(x, dtype=torch.bool)


def group_micro_step(
    roles: Roles, micro: Rollout, cfg: Config, num_tokens: torch.Tensor, num_seqs: int, kl_coef: float
) -> dict[str, torch.Tensor]:
    """Clipped surrogate with per-sequence advantages (+ β·k3 per token for GRPO, β = ``kl_coef``: this step's
    value of the KL controller, not the fixed ``algorithm.kl_coef``); backpropagated at once. RLOO's β is already
    in its advantages.

    A micro-batch without old logprobs runs at the sampling parameters (GRPO's first epoch, see
    ``train.old_logprobs_from_update``): its own detached logprobs are the old ones (ratio = 1), and they come back
    as ``old_logprobs`` (b, T) with ``entropy_sum``, the summed entropy of its response tokens. The loss sees
    ``micro.loss_mask``: without the rows of truncated completions under ``rollout.mask_truncated_completions``."""
    a, temperature = cfg.algorithm, cfg.rollout.temperature
    first_epoch = micro.logprobs is None
    # (b, T); the entropy (a metric, no gradient) only when this pass stands in for the scoring pass
    logprobs, entropy = response_logprobs(roles.actor(), micro, temperature, with_entropy=first_epoch)
    old_logprobs = logprobs.detach() if first_epoch else micro.logprobs  # (b, T)
    common = dict(
        clip_eps=a.clip_eps,
        clip_eps_high=a.clip_eps_high,
        agg=a.loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=cfg.rollout.max_new_tokens,  # seq_sum_constant's L: the generation budget, the same every step
    )
    advantages = micro.advantages[:, 0]  # (b,)
    if a.name == "grpo":
        loss, stats = grpo_loss(
            logprobs, old_logprobs, micro.ref_logprobs, advantages, micro.loss_mask, kl_coef=kl_coef, **common
        )
    else:
        loss, stats = ppo_policy_loss(logprobs, old_logprobs, advantages, micro.loss_mask, **common)
    loss.backward()
    out = {"loss/policy": loss.detach(), **{f"policy/{k}": v for k, v in stats.items() if k != "kl"}}
    if "kl" in stats:
        out["policy/k3_kl"] = stats["kl"]
    if first_epoch:
        out["old_logprobs"], out["entropy_sum"] = old_logprobs, masked_sum(entropy, micro.response_mask)
    return out
