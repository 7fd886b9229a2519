"""Pure math of learning from preference pairs: the Bradley–Terry reward-model loss and offline DPO (sigmoid, IPO).

Every function takes per-pair tensors of shape (B,) — one entry per (prompt, chosen, rejected) pair — and returns
``(loss, stats)`` with a scalar loss (mean over pairs) and detached per-batch scalars; inputs are never modified.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float = 0.0,
    center_rewards_coefficient: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Reward-model loss ``mean_b[−log σ(r_c − r_r − m)] + c · mean_b[(r_c + r_r)²]``.

    chosen_rewards, rejected_rewards (B,): the scalar head's scores; ``margin`` m (B,) or a float: how much better
    the chosen answer must score (Llama-2's margin loss; 0 = plain Bradley–Terry). ``center_rewards_coefficient`` c
    (TRL's name, Eisenstein et al. 2023): pulls the summed rewards of a pair towards 0, so scores stay centred
    (null / 0 = off). −log σ(x) is computed as ``softplus(−x)``, exact for large |x|.

    stats: ``accuracy`` (share of pairs with r_c > r_r, ties count as wrong), ``margin`` (mean r_c − r_r),
    ``chosen`` / ``rejected`` (mean rewards)."""
    diff = chosen_rewards - rejected_rewards  # (B,)
    loss = F.softplus(-(diff - margin)).mean()
    if center_rewards_coefficient:
        loss = loss + center_rewards_coefficient * ((chosen_rewards + rejected_rewards) ** 2).mean()
    stats = {
        "accuracy": (diff > 0).float().mean().detach(),
        "margin": diff.mean().detach(),
        "chosen": chosen_rewards.mean().detach(),
        "rejected": rejected_rewards.mean().detach(),
    }
    return loss, stats


def implicit_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO's implicit reward of a response: ``β · (log π(y|x) − log π_ref(y|x))`` (B,), summed logprobs per row."""
    return beta * (logps - ref_logps)


def dpo_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Offline DPO on summed response logprobs (B,) of the policy and the reference.

    h = (log π(y_c) − log π_ref(y_c)) − (log π(y_r) − log π_ref(y_r)), the log-ratio margin, then
    ``sigmoid`` (Rafailov et al. 2023): ``−log σ(β · h)``; ``ipo`` (Azar et al. 2023): ``(h − 1 / (2β))²``, which
    regresses the margin to a fixed target instead of pushing it to infinity (β is then the strength of the
    regularisation, 1/(2β) the target). As TRL's ``ipo``, h is built from summed logprobs.

    stats, named as TRL logs them: ``rewards/chosen``, ``rewards/rejected`` (mean implicit rewards
    β · (log π − log π_ref)), ``rewards/accuracies`` (share with chosen reward > rejected), ``rewards/margins``
    (mean difference), ``logps/chosen``, ``logps/rejected`` (mean summed policy logprobs)."""
    if loss_type not in ("sigmoid", "ipo"):
        raise ValueError(f"dpo_loss: unknown loss_type {loss_type!r} (sigmoid or ipo)")
    h = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)  # (B,)
    if loss_type == "sigmoid":
        losses = F.softplus(-beta * h)
    else:
        losses = (h - 1 / (2 * beta)) ** 2
    chosen_rewards = implicit_rewards(chosen_logps, ref_chosen_logps, beta).detach()
    rejected_rewards = implicit_rewards(rejected_logps, ref_rejected_logps, beta).detach()
    stats = {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float().mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
        "logps/chosen": chosen_logps.detach().mean(),
        "logps/rejected": rejected_logps.detach().mean(),
    }
    return losses.mean(), stats
