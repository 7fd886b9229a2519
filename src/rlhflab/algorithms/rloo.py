"""RLOO: k samples per prompt, the summed k1 KL folded into each sample's reward, a leave-one-out baseline."""

from __future__ import annotations

import torch

from rlhflab.algorithms.advantages import rloo, token_rewards
from rlhflab.algorithms.base import Algorithm, MicroStats
from rlhflab.algorithms.group import every_row, sequence_micro_step, with_sequence_advantages
from rlhflab.algorithms.losses import ppo_policy_loss
from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.models.roles import Roles
from rlhflab.ops import masked_mean


def rloo_advantages(
    rollout: Rollout, cfg: Config, kl_coef: float, dist: Dist = SINGLE
) -> tuple[Rollout, dict[str, float]]:
    """R_i = score_i − β · Σ_t k1_t, A_i = R_i − baseline (``algorithm.rloo_baseline``): (B, 1) advantages.
    Under data parallelism the ``batch_mean`` baseline is the mean over every process's rows."""
    rewards, _ = token_rewards(
        rollout.logprobs, rollout.ref_logprobs, rollout.scores, rollout.response_mask, kl_coef
    )  # (B, T)
    sequence_reward = rewards.sum(1)  # (B,) = score − β Σ_t k1_t
    global_mean = None
    if cfg.algorithm.rloo_baseline == "batch_mean" and dist.enabled:
        global_mean = masked_mean(sequence_reward, every_row(sequence_reward), reduce_sum=dist.sum)
    k = cfg.rollout.samples_per_prompt
    advantages = rloo(sequence_reward, k, cfg.algorithm.rloo_baseline, batch_mean=global_mean)
    return with_sequence_advantages(rollout, advantages, sequence_reward, cfg, dist)


def rloo_micro_step(
    roles: Roles, micro: Rollout, cfg: Config, num_tokens: torch.Tensor, num_seqs: int, kl_coef: float
) -> MicroStats:
    """The clipped surrogate on the sequence advantages; ``kl_coef`` is unused (RLOO's β is in its rewards)."""
    return sequence_micro_step(roles, micro, cfg, num_tokens, num_seqs, ppo_policy_loss)


RLOO = Algorithm("rloo", needs_critic=False, advantages=rloo_advantages, micro_step=rloo_micro_step)
