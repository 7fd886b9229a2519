"""Reward shaping and advantage estimators: per-token KL-shaped rewards + GAE (PPO), RLOO, GRPO group norm.

Shapes: B sequences, T response positions. ``mask`` (B, T) is a bool prefix mask (True = real response token,
then only padding). Group estimators assume the k samples of one prompt are contiguous: rows ``i*k … i*k+k-1``
belong to prompt i. Inputs are never modified; callers compute these under ``torch.no_grad()`` on rollouts.
"""

import torch

from rlhflab.ops import kl_penalty

BASELINES = ("leave_one_out", "batch_mean", "none")


def token_rewards(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    scores: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards for PPO: a k1 KL penalty on every token, the sequence score on the last one.

    ``kl_t = logprobs_t − ref_logprobs_t`` (0 where mask is False),
    ``r_t = −kl_coef · kl_t + scores_b · [t = len_b − 1]`` with ``len_b = Σ_t mask_{b,t}``,
    so ``Σ_t r_t = scores_b − kl_coef · Σ_t kl_t``.

    logprobs, ref_logprobs, mask (B, T); scores (B,) → (rewards, kl), both (B, T).
    """
    lengths = mask.sum(1)
    if (lengths == 0).any():
        raise ValueError("every response needs at least one valid token; got a row with an all-False mask")
    kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, "k1"), 0.0)
    last = (lengths - 1).unsqueeze(1)  # the final real token, not the first padding position
    rewards = (-kl_coef * kl).scatter_add(1, last, scores.unsqueeze(1).to(kl.dtype))
    return rewards, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation over the valid tokens of each row.

    Backwards over t, with ``m_{t+1} = mask_{t+1}`` (0 past the end):
    ``δ_t = r_t + γ · V_{t+1} · m_{t+1} − V_t``, ``A_t = δ_t + γλ · A_{t+1} · m_{t+1}``;
    returns ``R_t = A_t + V_t``.
    The episode ends at the last valid token, so nothing bootstraps from padding.

    rewards, values, mask (B, T) → (advantages, returns), both (B, T) and 0 where mask is False.
    """
    T = rewards.shape[1]
    zeros = torch.zeros_like(rewards[:, 0])
    next_value, next_adv = zeros, zeros
    reversed_advs = []
    for t in reversed(range(T)):
        nxt = mask[:, t + 1] if t + 1 < T else torch.zeros_like(mask[:, 0])
        # where (not multiply) so NaN/inf stored at padded positions cannot leak into valid ones
        delta = rewards[:, t] + gamma * torch.where(nxt, next_value, 0.0) - values[:, t]
        next_adv = delta + gamma * lam * torch.where(nxt, next_adv, 0.0)
        next_value = values[:, t]
        reversed_advs.append(next_adv)
    advantages = torch.stack(reversed_advs[::-1], dim=1)
    returns = torch.where(mask, advantages + values, 0.0)
    return torch.where(mask, advantages, 0.0), returns


def _groups(scores: torch.Tensor, k: int) -> torch.Tensor:
    """View scores (B,) as (B/k, k): one row per prompt."""
    if scores.shape[0] % k != 0:
        raise ValueError(f"batch size B={scores.shape[0]} is not divisible by the group size k={k}")
    return scores.view(-1, k)


def rloo(
    scores: torch.Tensor, k: int, baseline: str = "leave_one_out", batch_mean: torch.Tensor | None = None
) -> torch.Tensor:
    """Sequence-level REINFORCE advantages with a baseline, scores (B,) → (B,).

    - ``'leave_one_out'``: ``A_i = R_i − (Σ_{j in group, j≠i} R_j) / (k − 1)`` (needs k ≥ 2)
    - ``'batch_mean'``: ``A_i = R_i − mean_batch(R)``; ``batch_mean`` overrides the mean of ``scores`` (under data
      parallelism the batch is every process's rows)
    - ``'none'``: ``A_i = R_i``
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; valid baselines are {BASELINES}")
    groups = _groups(scores, k)
    if baseline == "leave_one_out":
        if k < 2:
            raise ValueError(f"leave_one_out baseline needs k >= 2 samples per prompt, got k={k}")
        others_mean = (groups.sum(1, keepdim=True) - groups) / (k - 1)
        return (groups - others_mean).reshape(-1)
    if baseline == "batch_mean":
        return scores - (scores.mean() if batch_mean is None else batch_mean)
    return scores.clone()


def group_norm(scores: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO group-relative advantages, scores (B,) → (B,).

    ``A_i = (R_i − mean_group(R)) / (std_group(R) + eps)`` with the unbiased std (as ``torch.std``);
    ``scale=False`` gives ``A_i = R_i − mean_group(R)`` (Dr. GRPO: no std division, which would up-weight
    prompts that are nearly always solved or always failed).
    """
    groups = _groups(scores, k)
    if scale and k < 2:
        raise ValueError(f"group std needs k >= 2 samples per prompt, got k={k}")
    centered = groups - groups.mean(1, keepdim=True)
    if scale:
        centered = centered / (groups.std(1, keepdim=True) + eps)
    return centered.reshape(-1)


def sequence_advantages(scores_or_returns: torch.Tensor, values_seq: torch.Tensor) -> torch.Tensor:
    """Advantages for a sequence-level critic: ``A = R − V``, both (B,) → (B,)."""
    if scores_or_returns.shape != values_seq.shape:
        # (B,) − (B, 1) would silently broadcast to (B, B)
        raise ValueError(
            f"shape mismatch: returns {tuple(scores_or_returns.shape)} vs values {tuple(values_seq.shape)}"
        )
    return scores_or_returns - values_seq


def expand_to_tokens(seq_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Broadcast one value per sequence to its tokens: (B,) → (B, T), ``x_{b,t} = v_b · mask_{b,t}``."""
    return torch.where(mask, seq_values.unsqueeze(1), 0.0)
