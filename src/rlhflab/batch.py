"""Typed batches: one :class:`Rollout` carries a step's samples from generation through scoring to the update.

Shapes: B = rows (completions), P = prompt length (left-padded), T = response length (right-padded after EOS).
Masks are bool, True = real token.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import torch


@dataclass
class Rollout:
    """One batch of sampled completions and everything the update needs from the time they were sampled."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, T) pad after the first EOS
    response_mask: torch.Tensor  # (B, T) bool, up to and including the first EOS
    logprobs: torch.Tensor | None = None  # (B, T) policy at sampling time ("old" logprobs)
    ref_logprobs: torch.Tensor | None = None  # (B, T) reference model
    values: torch.Tensor | None = None  # (B, T) token critic, or (B, 1) sequence critic
    critic_states: torch.Tensor | None = None  # (B, T, H) | (B, 1, H) what the value head reads (backbone reference)
    scores: torch.Tensor | None = None  # (B,) judge score
    advantages: torch.Tensor | None = None  # (B, T) or (B, 1)
    returns: torch.Tensor | None = None  # same shape as values
    truncated: torch.Tensor | None = None  # (B,) bool, no EOS within max_new_tokens; set = masked out of the loss

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + T) bool
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def loss_mask(self) -> torch.Tensor:  # (B, T) bool: the response tokens the policy loss sees
        return self.response_mask if self.truncated is None else self.response_mask & ~self.truncated[:, None]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: torch.Tensor | slice) -> Rollout:
        """Rows ``index`` of every tensor field (for minibatches and micro-batches)."""
        return replace(
            self,
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if getattr(self, f.name) is not None},
        )

    def chunks(self, size: int) -> Iterator[Rollout]:
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))
