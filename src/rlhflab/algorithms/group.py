"""What RLOO and GRPO share on the PPO engine: k samples per prompt, one advantage per completion, no critic.

What β (``algorithm.kl_coef``) means differs per algorithm (the formulas live in advantages.py / losses.py):
- rloo: R_i = score_i − β · Σ_t k1_t is the sequence reward; A_i = R_i − mean_{j≠i} R_j (or another baseline).
- grpo: A_i = (score_i − mean_group) / (std_group + ε); β · k3_t is added per token inside the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from rlhflab.algorithms.base import MicroStats
from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.models.forward import response_logprobs
from rlhflab.models.roles import Roles
from rlhflab.ops import masked_mean, masked_sum, masked_whiten

PolicyLoss = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""(logprobs, old_logprobs, advantages (b,), loss mask, clip_eps=, clip_eps_high=, agg=, num_tokens=, num_seqs=,
max_len=) → (loss, stats): :func:`rlhflab.algorithms.losses.ppo_policy_loss` or GRPO's loss with its KL term."""


def every_row(x: torch.Tensor) -> torch.Tensor:
    """An all-True mask shaped like ``x``."""
    return torch.ones_like(x, dtype=torch.bool)


def with_sequence_advantages(
    rollout: Rollout, advantages: torch.Tensor, sequence_reward: torch.Tensor, cfg: Config, dist: Dist = SINGLE
) -> tuple[Rollout, dict[str, float]]:
    """The rollout with (B, 1) advantages, one per completion (whitened when ``algorithm.whiten_advantages``), and
    ``returns/mean``, the mean sequence reward (B,). Under data parallelism (``dist``) the whitening and the mean
    are over the global batch; a prompt's k samples live on one process, so group statistics stay local."""
    advantages = advantages[:, None]  # (B, 1)
    if cfg.algorithm.whitens():
        advantages = masked_whiten(advantages, every_row(advantages), reduce_sum=dist.reduce_sum)
    if dist.enabled:
        stats = {"returns/mean": masked_mean(sequence_reward, every_row(sequence_reward), reduce_sum=dist.sum).item()}
    else:
        stats = {"returns/mean": sequence_reward.mean().item()}
    return replace(rollout, advantages=advantages), stats


def sequence_micro_step(
    roles: Roles,
    micro: Rollout,
    cfg: Config,
    num_tokens: torch.Tensor,
    num_seqs: int,
    policy_loss: PolicyLoss,
) -> MicroStats:
    """The clipped surrogate with per-sequence advantages (``policy_loss``), backpropagated at once.

    A micro-batch without old logprobs runs at the sampling parameters (GRPO's first epoch, see
    :func:`rlhflab.algorithms.grpo.measures_old_logprobs`): its own detached logprobs are the old ones (ratio = 1),
    and they come back in the stats with the summed entropy of its response tokens. The loss sees
    ``micro.loss_mask``: without the rows of truncated completions under ``rollout.mask_truncated_completions``."""
    a, temperature = cfg.algorithm, cfg.rollout.temperature
    first_epoch = micro.logprobs is None
    # (b, T); the entropy (a metric, no gradient) only when this pass stands in for the scoring pass
    logprobs, entropy = response_logprobs(roles.actor(), micro, temperature, with_entropy=first_epoch)
    old_logprobs = logprobs.detach() if first_epoch else micro.logprobs  # (b, T)
    loss, stats = policy_loss(
        logprobs,
        old_logprobs,
        micro.advantages[:, 0],  # (b,)
        micro.loss_mask,
        clip_eps=a.clip_eps,
        clip_eps_high=a.clip_eps_high,
        agg=a.loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=cfg.rollout.max_new_tokens,  # seq_sum_constant's L: the generation budget, the same every step
    )
    loss.backward()
    return MicroStats(
        policy_loss=loss.detach(),
        approxkl=stats["approxkl"],
        clipfrac=stats["clipfrac"],
        ratio=stats["ratio"],
        k3_kl=stats.get("kl"),
        old_logprobs=old_logprobs if first_epoch else None,
        entropy_sum=masked_sum(entropy, micro.response_mask) if first_epoch else None,
    )
