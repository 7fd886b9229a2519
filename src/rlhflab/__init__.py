"""rlhflab: reinforcement learning from a reward signal for causal language models, in plain PyTorch."""

__version__ = "0.1.0"
