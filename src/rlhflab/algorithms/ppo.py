"""PPO: per-token rewards → GAE advantages with a learned critic, and the clipped policy + value loss of one
micro-batch. The math lives in :mod:`rlhflab.algorithms.advantages`, :mod:`rlhflab.algorithms.losses` and
:mod:`rlhflab.ops`.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import torch

from rlhflab.algorithms.advantages import gae, sequence_advantages, token_rewards
from rlhflab.algorithms.base import Algorithm, MicroStats
from rlhflab.algorithms.losses import explained_variance, ppo_policy_loss, value_loss
from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.models.forward import captured_hidden, response_logprobs
from rlhflab.models.roles import Roles
from rlhflab.ops import masked_mean, masked_whiten


def value_mask(rollout: Rollout, granularity: str) -> torch.Tensor:
    """The mask that goes with ``rollout.values``: response tokens, or one True per row for a sequence critic."""
    if granularity == "sequence":
        return torch.ones_like(rollout.response_mask[:, :1])  # (B, 1)
    return rollout.response_mask  # (B, T)


def ppo_advantages(
    rollout: Rollout, cfg: Config, kl_coef: float, dist: Dist = SINGLE
) -> tuple[Rollout, dict[str, float]]:
    """Per-token rewards r_t = −β·k1_t (+ score at the last kept token), then GAE (token critic) or
    A = R − V with R = Σ_t r_t (sequence critic); advantages are whitened over valid tokens.

    Under data parallelism (``dist``) GAE stays per row, while the whitening and the stats use the global batch."""
    a, mask = cfg.algorithm, rollout.response_mask
    rewards, kl = token_rewards(rollout.logprobs, rollout.ref_logprobs, rollout.scores, mask, kl_coef)  # (B, T)
    if cfg.critic.granularity == "sequence":
        returns = rewards.sum(dim=1, keepdim=True)  # (B, 1) = score − β Σ_t KL_t
        advantages = sequence_advantages(returns, rollout.values)  # (B, 1)
    else:
        advantages, returns = gae(rewards, rollout.values, mask, a.gamma, a.gae_lambda)  # (B, T)
    vmask = value_mask(rollout, cfg.critic.granularity)
    if a.whitens():
        advantages = masked_whiten(advantages, vmask, reduce_sum=dist.reduce_sum)
    stats = {
        "val/explained_variance": explained_variance(*dist.gather_rows(rollout.values, returns, vmask)).item(),
        "val/mean": masked_mean(rollout.values, vmask, reduce_sum=dist.reduce_sum).item(),
        "returns/mean": masked_mean(returns, vmask, reduce_sum=dist.reduce_sum).item(),
    }
    return replace(rollout, advantages=advantages, returns=returns), stats


def ppo_micro_step(
    roles: Roles, micro: Rollout, cfg: Config, num_tokens: torch.Tensor, num_seqs: int, kl_coef: float
) -> MicroStats:
    """Policy loss and value loss of one micro-batch, backpropagated right away (normalised by the whole minibatch's
    token / sequence counts, so accumulation equals one big batch; under data parallelism, the global minibatch's
    counts). A critic adapter of its own: two forwards and two backwards, each before the other adapter is
    activated; a shared trunk (``critic.backbone: shared``): the value head reads the policy pass's hidden states and
    one backward takes ``policy + vf_coef · value`` (with ``critic.shared_grad: false`` the hidden states are detached,
    so the value loss trains the head alone); on the reference (``critic.backbone: reference``): the head reads the
    reference's hidden states kept by the scoring pass, so the value loss costs no forward and trains the head alone,
    and the same one backward serves both. ``kl_coef`` is unused: PPO's β is already in the rewards behind
    the advantages. Returns detached stats."""
    a, max_len = cfg.algorithm, cfg.rollout.max_new_tokens  # seq_sum_constant's L: the generation budget
    mask, granularity = micro.response_mask, cfg.critic.granularity
    actor = roles.actor()
    with captured_hidden(actor) if roles.shared_trunk else contextlib.nullcontext() as hidden:
        logprobs, _ = response_logprobs(actor, micro, cfg.rollout.temperature)  # (b, T)
    advantages = micro.advantages if micro.advantages.shape[1] > 1 else micro.advantages[:, 0]  # (b, T) | (b,)
    policy_loss, policy_stats = ppo_policy_loss(
        logprobs,
        micro.logprobs,
        advantages,
        mask,
        a.clip_eps,
        a.clip_eps_high,
        agg=a.loss_agg,
        num_tokens=num_tokens,
        num_seqs=num_seqs,
        max_len=max_len,
    )
    if roles.shared_trunk:
        trunk = hidden[-1] if cfg.critic.shared_grad else hidden[-1].detach()  # (b, P + T, H); detached: head only
        values = roles.values_from_hidden(trunk, micro, granularity)  # (b, T) | (b, 1)
    elif roles.critic_on_reference:
        values = roles.values_from_states(micro.critic_states)  # (b, T) | (b, 1): the frozen reference's states
    else:
        policy_loss.backward()  # before values() activates the critic adapter
        values = roles.values(micro, granularity)  # (b, T) | (b, 1)
    loss_v, value_stats = value_loss(
        values,
        micro.values,
        micro.returns,
        value_mask(micro, granularity),
        a.clip_eps_value,
        agg=a.loss_agg,
        num_tokens=num_tokens if granularity == "token" else num_seqs,
        num_seqs=num_seqs,
        max_len=max_len if granularity == "token" else 1,
    )
    (a.vf_coef * loss_v if roles.own_critic else policy_loss + a.vf_coef * loss_v).backward()
    return MicroStats(
        policy_loss=policy_loss.detach(),
        approxkl=policy_stats["approxkl"],
        clipfrac=policy_stats["clipfrac"],
        ratio=policy_stats["ratio"],
        value_loss=loss_v.detach(),
        value_clipfrac=value_stats["clipfrac"],
    )


PPO = Algorithm("ppo", needs_critic=True, advantages=ppo_advantages, micro_step=ppo_micro_step)
