"""Policy and value losses: clipped PPO surrogate, clipped value loss, GRPO loss, and their aggregation.

Every loss builds a per-token loss (B, T) and reduces it with :func:`aggregate`; losses return
``(loss, stats)`` where ``stats`` maps names to detached scalar tensors. ``mask`` (B, T) is a bool prefix mask
with True = real response token.

Where the KL coefficient β (``kl_coef``) acts differs between algorithms, on purpose:

- PPO: k1 per token folded into the per-token reward before GAE (``advantages.token_rewards``).
- RLOO: k1 summed per sequence and subtracted from the sequence score before the baseline.
- GRPO: k3 per token added to the loss here (:func:`grpo_loss`), outside the advantage.
"""

import torch

from rlhflab.ops import kl_penalty, masked_mean, masked_sum, masked_var

AGG_MODES = ("token_mean", "seq_mean", "seq_sum_constant")


def aggregate(
    loss_tokens: torch.Tensor,
    mask: torch.Tensor | None,
    mode: str,
    num_tokens: int | torch.Tensor | None = None,
    num_seqs: int | None = None,
    max_len: int | None = None,
) -> torch.Tensor:
    """Reduce a per-token loss (B, T) to a scalar; ``m`` = mask, ``len_b = Σ_t m_{b,t}``.

    - ``'token_mean'``: ``Σ_{b,t} ℓ·m / N_tokens`` (N_tokens defaults to ``Σ m``)
    - ``'seq_mean'``: ``Σ_b (Σ_t ℓ·m / len_b) / N_seqs`` (N_seqs defaults to B)
    - ``'seq_sum_constant'`` (Dr. GRPO): ``Σ_{b,t} ℓ·m / (N_seqs · max_len)``; ``max_len`` is a constant, the
      generation budget (``rollout.max_new_tokens``, as in the Dr. GRPO paper and TRL's ``dr_grpo``), not the
      batch's longest response, which would change the loss scale from step to step (defaults to T)

    For gradient accumulation pass the *whole* minibatch's ``num_tokens`` / ``num_seqs`` (and the fixed
    ``max_len``) to each micro-batch: the micro-batch losses then sum exactly to the minibatch loss.
    A (B,) loss is treated as (B, 1), and ``mask=None`` means every entry is valid.
    """
    if mode not in AGG_MODES:
        raise ValueError(f"unknown aggregation mode {mode!r}; valid modes are {AGG_MODES}")
    if mask is None:
        mask = torch.ones_like(loss_tokens, dtype=torch.bool)
    if loss_tokens.dim() == 1:
        loss_tokens, mask = loss_tokens.unsqueeze(1), mask.unsqueeze(1)
    B, T = loss_tokens.shape
    num_seqs = B if num_seqs is None else num_seqs
    if mode == "token_mean":
        return masked_sum(loss_tokens, mask) / (mask.sum() if num_tokens is None else num_tokens)
    if mode == "seq_mean":  # a row without valid tokens (masked out of the loss) adds 0, not 0/0
        return (masked_sum(loss_tokens, mask, dim=1) / mask.sum(1).clamp(min=1)).sum() / num_seqs
    return masked_sum(loss_tokens, mask) / (num_seqs * (T if max_len is None else max_len))


def _stats(mask: torch.Tensor, **per_token: torch.Tensor) -> dict[str, torch.Tensor]:
    """Masked means of per-token diagnostics (bool indicators become fractions), detached."""
    return {
        name: masked_mean(x.detach().float() if x.dtype == torch.bool else x.detach(), mask)
        for name, x in per_token.items()
    }


def clipped_surrogate(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate per token (to minimise).

    ``ρ = exp(logprobs − old_logprobs)``, ``ℓ = max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε_high))`` with ε_high = ε
    by default (a larger ε_high is DAPO's "clip-higher"). The clipped branch has no gradient in ρ, so tokens
    whose ratio already moved past the trust region in the advantageous direction stop being pushed.

    logprobs, old_logprobs (B, T); advantages (B, T) or (B,) (one per sequence, broadcast over T)
    → (per-token loss, clipped indicator ``−A·clip(ρ) > −A·ρ`` (bool), ratio ρ), all (B, T).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped, ratio


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token_mean",
    num_tokens: int | torch.Tensor | None = None,
    num_seqs: int | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped PPO policy loss: ``aggregate(clipped_surrogate(...))`` (see :func:`clipped_surrogate`).

    stats: ``clipfrac`` (share of tokens on the clipped branch), ``approxkl`` (mean k2
    ``½(logprobs − old_logprobs)²``), ``ratio`` (mean ρ).
    """
    loss_tokens, is_clipped, ratio = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high)
    loss = aggregate(loss_tokens, mask, agg, num_tokens, num_seqs, max_len)
    approxkl = kl_penalty(logprobs, old_logprobs, "k2")
    return loss, _stats(mask, clipfrac=is_clipped, approxkl=approxkl, ratio=ratio)


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None,
    clip_eps_v: float | None = 0.2,
    agg: str = "token_mean",
    num_tokens: int | torch.Tensor | None = None,
    num_seqs: int | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss: ``½ · max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²)`` per token.

    ``clip_eps_v=None`` disables clipping (``½ (V − R)²``). All inputs (B, T) with mask (B, T); a
    sequence-level critic passes (B,) tensors with a (B,) mask or ``mask=None``.
    stats: ``clipfrac`` (share where the clipped error is strictly larger), ``value_mean``.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    err = (values - returns) ** 2
    if clip_eps_v is None:
        err_clipped = err
    else:
        err_clipped = (torch.clamp(values, old_values - clip_eps_v, old_values + clip_eps_v) - returns) ** 2
    loss_tokens = 0.5 * torch.maximum(err, err_clipped)
    loss = aggregate(loss_tokens, mask, agg, num_tokens, num_seqs, max_len)
    return loss, _stats(mask, clipfrac=err_clipped > err, value_mean=values)


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    kl_coef: float = 0.05,
    agg: str = "token_mean",
    num_tokens: int | torch.Tensor | None = None,
    num_seqs: int | None = None,
    max_len: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO loss: clipped surrogate plus a per-token k3 KL penalty, aggregated together.

    ``ℓ_t = clipped_surrogate_t + β · k3_t`` with ``k3_t = exp(ref_t − logp_t) − 1 − (ref_t − logp_t)``.
    Here β penalises KL inside the loss, so its gradient pulls ``logp`` toward ``ref`` directly
    (``∂k3/∂logp = 1 − exp(ref − logp)``); PPO instead folds k1 into per-token rewards and RLOO subtracts
    the summed k1 from the sequence score. ``ref_logprobs=None`` is allowed only with ``kl_coef=0``.
    stats: those of :func:`ppo_policy_loss` plus ``kl`` (mean k3, 0 without a reference).
    """
    loss_tokens, is_clipped, ratio = clipped_surrogate(logprobs, old_logprobs, advantages, clip_eps, clip_eps_high)
    if ref_logprobs is None:
        if kl_coef != 0:
            raise ValueError(f"grpo_loss needs ref_logprobs when kl_coef != 0 (got kl_coef={kl_coef})")
        kl = torch.zeros_like(logprobs)
    else:
        kl = kl_penalty(logprobs, ref_logprobs, "k3")
        loss_tokens = loss_tokens + kl_coef * kl
    loss = aggregate(loss_tokens, mask, agg, num_tokens, num_seqs, max_len)
    approxkl = kl_penalty(logprobs, old_logprobs, "k2")
    return loss, _stats(mask, clipfrac=is_clipped, approxkl=approxkl, ratio=ratio, kl=kl)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much of the return variance the critic explains: ``1 − Var[R − V] / Var[R]`` (biased, masked).

    1 = perfect, 0 = no better than predicting the mean, < 0 = worse. When ``Var[R] = 0`` the ratio is
    undefined and 0 is returned instead of NaN/inf. Detached scalar.
    """
    values, returns = values.detach(), returns.detach()
    var_returns = masked_var(returns, mask)
    ev = 1.0 - masked_var(returns - values, mask) / var_returns
    return torch.where(var_returns > 0, ev, torch.zeros_like(ev))
