"""Reward callables for tests, loaded through the 'module:function' config path."""


def length_reward(prompts, completions, **kwargs):
    """Longer completions score higher: a reward that varies on random-model text."""
    return [len(c) / 10.0 for c in completions]


def nan_reward(prompts, completions, **kwargs):
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def prompt_echo(prompts, completions, **kwargs):
    return [float(len(p)) for p in prompts]


def fixed_scores(prompts, completions, **kwargs):
    """0.9, 0.2, -0.5, 0.9, 0.2, ... whatever the text."""
    return [(0.9, 0.2, -0.5)[i % 3] for i in range(len(completions))]
