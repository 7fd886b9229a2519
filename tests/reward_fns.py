"""Reward callables for tests, loaded through the 'module:function' config path."""


def length_reward(prompts, completions, **kwargs):
    """Longer completions score higher: a reward that varies on random-model text."""
    return [len(c) / 10.0 for c in completions]
