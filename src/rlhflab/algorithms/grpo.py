"""GRPO: k samples per prompt, group-normalised scores as advantages, β · k3 per token inside the loss."""

from __future__ import annotations

import torch

from rlhflab.algorithms.advantages import group_norm
from rlhflab.algorithms.base import Algorithm, MicroStats
from rlhflab.algorithms.group import sequence_micro_step, with_sequence_advantages
from rlhflab.algorithms.losses import grpo_loss
from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.models.roles import Roles


def grpo_advantages(
    rollout: Rollout, cfg: Config, kl_coef: float, dist: Dist = SINGLE
) -> tuple[Rollout, dict[str, float]]:
    """A_i = (score_i − mean_group) / (std_group + ε) (``algorithm.group_scale`` false: no division): (B, 1).
    ``kl_coef`` is unused here: GRPO's KL term is in the loss."""
    advantages = group_norm(rollout.scores, cfg.rollout.samples_per_prompt, scale=cfg.algorithm.group_scale)
    return with_sequence_advantages(rollout, advantages, rollout.scores, cfg, dist)


def grpo_micro_step(
    roles: Roles, micro: Rollout, cfg: Config, num_tokens: torch.Tensor, num_seqs: int, kl_coef: float
) -> MicroStats:
    """The clipped surrogate + β·k3 per token, β = ``kl_coef``: this step's value of the KL controller, not the
    fixed ``algorithm.kl_coef``."""

    def loss(logprobs, old_logprobs, advantages, mask, **common):
        return grpo_loss(logprobs, old_logprobs, micro.ref_logprobs, advantages, mask, kl_coef=kl_coef, **common)

    return sequence_micro_step(roles, micro, cfg, num_tokens, num_seqs, loss)


def measures_old_logprobs(cfg: Config) -> bool:
    """Whether the update's first epoch measures the old logprobs instead of a scoring pass.

    GRPO needs them only inside its loss (its KL term is in the loss, not in the rewards or advantages). With one
    minibatch per epoch and dropout off, every micro-batch of the first epoch runs at the sampling parameters, so
    its own detached logprobs are the numbers a scoring pass would give (bit for bit: same shapes, no noise);
    taking them saves one no-grad policy pass over the batch. PPO and RLOO fold the KL into rewards before the
    update, so they need the scoring pass."""
    return cfg.algorithm.num_minibatches == 1 and not cfg.train.dropout


GRPO = Algorithm(
    "grpo",
    needs_critic=False,
    advantages=grpo_advantages,
    micro_step=grpo_micro_step,
    measures_old_logprobs=measures_old_logprobs,
)
