"""The one interface every algorithm implements, and the typed stats its micro-step returns.

An :class:`Algorithm` says whether it needs a critic, how it turns a scored rollout into advantages, and what one
micro-batch's loss is; the loop (:mod:`rlhflab.train`, :mod:`rlhflab.update`) runs any of them the same way. A new
one (DPO, a reward-model trainer) is a new module with its ``Algorithm`` and a line in
:mod:`rlhflab.algorithms.registry`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.distributed import Dist
from rlhflab.models.roles import Roles


@dataclass
class MicroStats:
    """One micro-batch's detached scalars. The losses are its partial sums of the minibatch loss (they add up over
    the micro-batches); the others are means over its loss tokens, which the minibatch averages weighted by each
    micro-batch's share of the tokens (a sequence critic's ``value_clipfrac``: by its share of the rows)."""

    policy_loss: torch.Tensor
    approxkl: torch.Tensor
    clipfrac: torch.Tensor
    ratio: torch.Tensor
    value_loss: torch.Tensor | None = None  # algorithms with a critic
    value_clipfrac: torch.Tensor | None = None
    k3_kl: torch.Tensor | None = None  # a KL term inside the loss (GRPO)
    # a pass that stood in for the scoring pass (Algorithm.measures_old_logprobs): its logprobs are the old ones
    old_logprobs: torch.Tensor | None = None  # (b, T)
    entropy_sum: torch.Tensor | None = None  # summed entropy of its response tokens

    def weighted(self, token_share: float, value_share: float) -> dict[str, float]:
        """Metric name → this micro-batch's term of the minibatch's value. A micro-batch with no token in the loss
        (every row a masked truncated completion) adds nothing to the means (its share is 0, its means 0/0)."""
        terms = {
            "loss/policy": (self.policy_loss, 1.0),
            "loss/value": (self.value_loss, 1.0),
            "policy/approxkl": (self.approxkl, token_share),
            "policy/clipfrac": (self.clipfrac, token_share),
            "policy/ratio": (self.ratio, token_share),
            "val/clipfrac": (self.value_clipfrac, value_share),
            "policy/k3_kl": (self.k3_kl, token_share),
        }
        return {
            key: value.item() * weight if weight else 0.0 for key, (value, weight) in terms.items() if value is not None
        }


AdvantageFn = Callable[[Rollout, Config, float, Dist], tuple[Rollout, dict[str, float]]]
"""(scored rollout, cfg, β of this step, dist) → (the rollout with advantages (and returns), metrics)."""
MicroStepFn = Callable[[Roles, Rollout, Config, torch.Tensor, int, float], MicroStats]
"""(roles, micro-batch, cfg, the minibatch's loss tokens, its rows, β) → stats; the loss is backpropagated inside:
normalised by the whole (global) minibatch's counts, so the micro-batches' gradients add up to its gradient."""


def never(cfg: Config) -> bool:
    """The old logprobs always come from the scoring pass."""
    return False


@dataclass(frozen=True)
class Algorithm:
    """What the loop needs to know of an algorithm; ``name`` is its ``algorithm.name``."""

    name: str
    needs_critic: bool
    advantages: AdvantageFn
    micro_step: MicroStepFn
    measures_old_logprobs: Callable[[Config], bool] = never
    """Whether the update's first epoch measures the old logprobs instead of a scoring pass (see GRPO)."""
