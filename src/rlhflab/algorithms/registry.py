"""Every algorithm by its ``algorithm.name``: a new one is its module plus a line here."""

from __future__ import annotations

from rlhflab.algorithms.base import Algorithm
from rlhflab.algorithms.grpo import GRPO
from rlhflab.algorithms.ppo import PPO
from rlhflab.algorithms.rloo import RLOO
from rlhflab.config import Config

ALGORITHMS: dict[str, Algorithm] = {algorithm.name: algorithm for algorithm in (PPO, RLOO, GRPO)}


def algorithm_for(cfg: Config) -> Algorithm:
    return ALGORITHMS[cfg.algorithm.name]
