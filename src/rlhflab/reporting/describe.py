"""Sentences about a run's config: its algorithm, model and reward, and which prompts it was evaluated on."""

from __future__ import annotations

from rlhflab.reporting.rundir import section

REWARD_KINDS = {
    "lexicon": "the VADER sentiment lexicon",
    "classifier": "a classifier",
    "callable": "a Python function",
    "repetition": "unique words / words",
    "short": "−1 for completions under min_words words",
    "reward_model": "a learned reward model",
}


def describe_reward(component: dict) -> str:
    kind = component.get("kind", "?")
    what = REWARD_KINDS.get(kind, str(kind))
    if kind == "reward_model" and component.get("path"):
        what = f"the reward model in {component['path']}"
    if kind == "classifier" and component.get("model"):
        what = f"classifier {component['model']} ({component.get('label', '')} {component.get('output', '')})"
    elif kind == "callable" and component.get("function"):
        what = f"function {component['function']}"
    elif kind == "short":
        what = f"−1 for completions under {component.get('min_words', '?')} words"
    weight, name, cap = component.get("weight", 1.0), component.get("name", kind), component.get("cap")
    counted = name if cap is None else f"min({name}, {cap:g})"  # reward.components[].cap
    return f"{weight:g} × {counted} ({what})"


def describe_rewards(cfg: dict, sep: str = " + ") -> str:
    """Every reward component of the config, joined by ``sep``."""
    components = section(cfg, "reward").get("components") or []
    return sep.join(describe_reward(c) for c in components if isinstance(c, dict)) or "(not recorded)"


def describe_algorithm(cfg: dict) -> str:
    a, critic, r = section(cfg, "algorithm"), section(cfg, "critic"), section(cfg, "rollout")
    name = str(a.get("name", "ppo"))
    k = r.get("samples_per_prompt", 1)
    if name == "ppo":
        gae = f"GAE γ={a.get('gamma', '?')}, λ={a.get('gae_lambda', '?')}"
        trunk = {"shared": "the policy's", "reference": "the reference's"}.get(critic.get("backbone"))
        head = f"value head on {trunk} hidden states" if trunk else "LoRA + value head"
        return f"PPO with a learned critic ({head}, {critic.get('granularity', 'token')}-level values, {gae})"
    if name == "rloo":
        return (
            f"RLOO ({a.get('rloo_baseline', 'leave_one_out').replace('_', '-')} baseline over k={k} samples per prompt)"
        )
    if name == "grpo":
        return f"GRPO (advantages normalised within groups of k={k} samples per prompt)"
    if name == "dpo":
        p = section(cfg, "preference")
        return f"DPO ({p.get('loss_type', 'sigmoid')} loss, β={p.get('beta', '?')}, on preference pairs)"
    return name.upper()


def describe_model(name: str) -> str:
    if name == "demo":
        return "the offline demo model (a tiny GPT-NeoX review writer built by `rlhflab sft`)"
    return f"`{name}`"


def positive_threshold(cfg: dict) -> float:
    """The score above which a completion counts as positive (when its judge gives no verdict of its own)."""
    return section(cfg, "eval").get("positive_threshold", 0.05)


def held_out(cfg: dict) -> bool:
    """Whether the evaluation prompts were held out; without any configured, train.py uses the first training ones."""
    data, ev = section(cfg, "data"), section(cfg, "eval")
    held = bool(data.get("eval_prompts_file")) or bool(data.get("eval_dataset_split")) or bool(ev.get("prompts"))
    return data.get("source", "demo") == "demo" or held


def eval_intro(cfg: dict, n) -> str:
    """The sentence above the before/after table: how many completions, of which prompts."""
    prompts = (
        "held-out prompts"
        if held_out(cfg)
        else "the first training prompts (no held-out prompts were configured: set data.eval_prompts_file)"
    )
    return (
        f"{n} completions per side of {prompts}, scored by the training judge:"
        " the starting model (before) vs the trained policy (after)."
    )
