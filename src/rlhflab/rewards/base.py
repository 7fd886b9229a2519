"""The reward protocol and the weighted sum that turns components into one score per completion."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch

from rlhflab.config import RewardComponent, RewardConfig
from rlhflab.errors import UserError


class Reward(Protocol):
    def __call__(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scores (B,) and each component's raw values (B,) by name."""
        ...


class CompositeReward:
    """score = Σ_c weight_c · component_c(text_c); each component judges the completion or prompt + completion."""

    def __init__(self, components: list[tuple[RewardComponent, Callable[[list[str]], list[float]]]]):
        self.components = components

    def __call__(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros(len(completions), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for spec, judge in self.components:
            texts = completions if spec.input == "completion" else [p + c for p, c in zip(prompts, completions)]
            values = [float(v) for v in judge(texts)]
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise FloatingPointError(f"reward component {spec.name!r} returned {v} for sample {i}: "
                                             f"prompt={prompts[i]!r} completion={completions[i]!r}")
            parts[spec.name] = torch.tensor(values, dtype=torch.float32)
            total = total + spec.weight * parts[spec.name]
        return total, parts


def build_judge(spec: RewardComponent) -> Callable[[list[str]], list[float]]:
    if spec.kind == "lexicon":
        from rlhflab.rewards.lexicon import VaderReward

        return VaderReward()
    raise UserError(f"reward.components: unknown kind {spec.kind!r} for {spec.name!r}")


def build_reward(cfg: RewardConfig) -> CompositeReward:
    return CompositeReward([(spec, build_judge(spec)) for spec in cfg.components])
