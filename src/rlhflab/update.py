"""The update: K epochs × M shuffled minibatches of an algorithm's micro-step losses, one optimiser step per
minibatch, gradients accumulated over its micro-batches (exactly one big batch's gradient)."""

from __future__ import annotations

from dataclasses import replace

import torch

from rlhflab.algorithms.registry import algorithm_for
from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.session import Setup


class NonFiniteUpdates(Exception):
    """Too many optimiser updates in a row had a non-finite loss or gradient."""


def accumulate_gradients(
    setup: Setup,
    minibatch: Rollout,
    cfg: Config,
    num_tokens: torch.Tensor,
    num_seqs: int,
    kl_coef: float,
    totals: dict,
    measured: list | None = None,
) -> bool:
    """Forward + backward of one minibatch in micro-batches, gradients summed into ``.grad``; the stats are added
    to ``totals``. Returns whether every micro-batch's loss was finite. A minibatch without old logprobs has each
    micro-batch's measured ``(old_logprobs, entropy_sum)`` appended to ``measured`` (see :func:`update`).

    ``num_tokens`` / ``num_seqs`` normalise the loss: the minibatch's own for one process; under data parallelism
    those of the global minibatch (all processes), so this process's loss is its partial sum of the global loss and
    the gradients of all processes add up to the global gradient. ``kl_coef``: this step's β (GRPO's loss term).
    """
    loss_finite, micro_step = True, algorithm_for(cfg).micro_step
    for micro in minibatch.chunks(cfg.train.micro_batch_size):
        stats = micro_step(setup.roles, micro, cfg, num_tokens, num_seqs, kl_coef)
        if stats.old_logprobs is not None:
            measured.append((stats.old_logprobs, stats.entropy_sum))
        token_share = (micro.loss_mask.sum() / num_tokens).item()
        row_share = len(micro) / num_seqs  # a sequence critic's stats are means over rows, not tokens
        loss_finite &= bool(torch.isfinite(stats.policy_loss))
        value_share = row_share if cfg.critic.granularity == "sequence" else token_share
        for key, value in stats.weighted(token_share, value_share).items():
            totals[key] = totals.get(key, 0.0) + value
    return loss_finite


def update(
    setup: Setup,
    rollout: Rollout,
    cfg: Config,
    optimizer,
    scheduler,
    params,
    generator,
    skips: dict,
    dist: Dist = SINGLE,
    *,
    kl_coef: float,
) -> tuple[dict, Rollout]:
    """K epochs × M shuffled minibatches; each minibatch accumulates micro-batches into one optimiser step.
    Returns the stats and the rollout, whose old logprobs the first epoch fills in when it has none (GRPO, see
    :attr:`~rlhflab.algorithms.base.Algorithm.measures_old_logprobs`; the stats then hold the policy's mean token
    entropy, ``objective/entropy``).

    An update whose loss or gradient is not finite is skipped (the scheduler still advances) and counted in
    ``skips``; ``train.max_nonfinite_in_a_row`` of them in a row raise :class:`NonFiniteUpdates`.
    With ``algorithm.target_kl``, an epoch whose minibatches' mean approx-KL exceeds it is the last (cleanrl's
    early stop); the skipped updates still advance the scheduler, and the stats average the updates that ran.
    Under data parallelism each process shuffles its own rows; the global minibatch is the union of the processes'
    minibatches, its gradient the all-reduced sum (see :func:`accumulate_gradients`). ``kl_coef`` is this step's
    β from the KL controller (fixed or adaptive), the one GRPO's loss uses.
    """
    a, t = cfg.algorithm, cfg.train
    minibatch_size = len(rollout) // a.num_minibatches
    totals: dict[str, float] = {}
    grad_norms = []
    measured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (old logprobs (b, T), entropy sum) per micro-batch
    entropy = None
    if rollout.logprobs is None and a.num_minibatches != 1:
        raise ValueError("the first epoch can stand in for the old logprobs only with algorithm.num_minibatches=1")
    lr = scheduler.get_last_lr()[0]  # the rate of this step's first update, logged as lr
    epochs = 0
    for _epoch in range(a.ppo_epochs):
        approxkl_before = totals.get("policy/approxkl", 0.0)
        order = torch.randperm(len(rollout), generator=generator).to(rollout.prompt_ids.device)
        for rows in order.split(minibatch_size):
            minibatch = rollout.select(rows)
            num_tokens = dist.sum(minibatch.loss_mask.sum()).clamp(min=1)  # all processes' loss tokens of it
            optimizer.zero_grad(set_to_none=True)
            loss_finite = accumulate_gradients(
                setup, minibatch, cfg, num_tokens, len(minibatch) * dist.world_size, kl_coef, totals, measured
            )
            if measured:  # the first epoch measured every row's old logprobs at the sampling parameters
                old_logprobs = torch.empty_like(rollout.response_ids, dtype=measured[0][0].dtype)  # (B, T)
                old_logprobs[rows] = torch.cat([logprobs for logprobs, _ in measured])
                rollout = replace(rollout, logprobs=old_logprobs)
                entropy = sum(entropy_sum for _, entropy_sum in measured).item() / rollout.response_mask.sum().item()
                measured = []
            loss_finite = dist.all_reduce_gradients(params, loss_finite)  # Σ over processes = global gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            if loss_finite and torch.isfinite(grad_norm):
                grad_norms.append(grad_norm.item())
                optimizer.step()
                skips["in_a_row"] = 0
            else:
                skips["total"] += 1
                skips["in_a_row"] += 1
                if skips["in_a_row"] >= t.max_nonfinite_in_a_row:
                    raise NonFiniteUpdates(f"{skips['in_a_row']} updates in a row had a non-finite loss or gradient")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        epochs += 1
        if a.target_kl is not None:  # the all-reduced mean over this epoch's minibatches: one decision everywhere
            epoch_kl = dist.sum_values({"kl": totals.get("policy/approxkl", 0.0) - approxkl_before})["kl"]
            epoch_kl /= a.num_minibatches
            if epoch_kl > a.target_kl:
                break
    for _ in range((a.ppo_epochs - epochs) * a.num_minibatches):
        scheduler.step()  # the skipped updates still advance the schedule: it does not depend on early stops
    updates = epochs * a.num_minibatches
    totals = dist.sum_values(totals)  # partial sums of global losses and token-weighted means
    out = {key: value / updates for key, value in totals.items()}
    out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    out["train/skipped_steps"] = skips["total"]
    out["lr"] = lr
    if a.target_kl is not None:
        out["policy/epochs"] = epochs
    if entropy is not None:
        out["objective/entropy"] = entropy
    return out, rollout
