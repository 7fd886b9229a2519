"""Reward sources behind one protocol: ``score(prompts, completions) -> (scores (B,), components)``."""

from rlhflab.rewards.base import CompositeReward, Reward, build_reward
from rlhflab.rewards.lexicon import VaderReward

__all__ = ["CompositeReward", "Reward", "VaderReward", "build_reward"]
