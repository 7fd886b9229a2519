"""The reward protocol and the weighted sum that turns components into one score per completion."""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Protocol

import torch

from rlhflab.config import RewardComponent, RewardConfig
from rlhflab.errors import UserError
from rlhflab.rewards import shaping


class Reward(Protocol):
    def __call__(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scores (B,) and each component's raw values (B,) by name."""
        ...


class CompositeReward:
    """score = Σ_c weight_c · min(component_c(prompts, completions), cap_c), each component's own value logged as
    reward/<name>."""

    def __init__(self, components: list[tuple[RewardComponent, Judge]]):
        self.components = components

    def __call__(self, prompts: list[str], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = torch.zeros(len(completions), dtype=torch.float32)
        parts: dict[str, torch.Tensor] = {}
        for spec, judge in self.components:
            values = [float(v) for v in judge(prompts, completions)]
            if len(values) != len(completions):
                raise UserError(
                    f"reward component {spec.name!r} returned {len(values)} scores for {len(completions)} completions"
                )
            for i, v in enumerate(values):
                if not math.isfinite(v):
                    raise UserError(
                        f"reward component {spec.name!r} returned {v} for sample {i}: "
                        f"prompt={prompts[i]!r} completion={completions[i]!r}"
                    )
            parts[spec.name] = torch.tensor(values, dtype=torch.float32)
            counted = parts[spec.name] if spec.cap is None else parts[spec.name].clamp(max=spec.cap)
            total = total + spec.weight * counted
        return total, parts


Judge = Callable[[list[str], list[str]], list[float]]


def missing_eos_penalty(scores: torch.Tensor, ended: torch.Tensor, penalty: float) -> torch.Tensor:
    """``score_b − penalty · [not ended_b]``: completions cut at ``max_new_tokens`` (no EOS) lose ``penalty``.

    scores (B,), ended (B,) bool (True = the response holds an EOS) → (B,); inputs are not modified."""
    return scores - penalty * (~ended).to(scores.dtype)


def load_callable(spec: str, key: str) -> Callable:
    """Import ``module:function`` -- the only way user code enters a run (named explicitly in the config)."""
    module_name, _, attr = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{key}: cannot import {spec!r} ({err})") from None
    if not callable(fn):
        raise UserError(f"{key}: {spec!r} is not callable")
    return fn


def build_judge(spec: RewardComponent, trust_remote_code: bool = False) -> Judge:
    """A function (prompts, completions) -> list of floats for one component."""
    key = f"reward.components[{spec.name}]"
    if spec.kind in ("lexicon", "classifier", "naive_bayes"):
        if spec.kind == "naive_bayes":
            from rlhflab.rewards.bayes import NaiveBayesSentiment

            corpus = spec.model
            if corpus == "demo":
                from rlhflab.data.demo import ensure_demo_data

                corpus = str(ensure_demo_data().corpus_file)
            judge_texts = NaiveBayesSentiment.from_jsonl(corpus, f"{key}.model")
        elif spec.kind == "lexicon":
            from rlhflab.rewards.lexicon import VaderReward

            judge_texts = VaderReward()
        else:
            from rlhflab.rewards.classifier import ClassifierReward

            judge_texts = ClassifierReward(
                spec.model, spec.label, spec.output, spec.device, spec.batch_size, trust_remote_code, key=f"{key}.model"
            )
        if spec.input == "completion":
            return lambda prompts, completions: judge_texts(completions)
        return lambda prompts, completions: judge_texts([p + c for p, c in zip(prompts, completions)])
    if spec.kind == "repetition":
        return lambda prompts, completions: shaping.repetition(completions)
    if spec.kind == "short":
        return lambda prompts, completions: shaping.short(completions, spec.min_words)
    if spec.kind == "callable":
        return load_callable(spec.function, f"{key}.function")
    if spec.kind == "reward_model":  # scores prompt + completion with its own tokenizer
        from rlhflab.models.reward_model import RewardModelJudge

        return RewardModelJudge(spec.path, spec.device, spec.batch_size, key=f"{key}.path")
    raise UserError(f"{key}: unknown kind {spec.kind!r}")


def build_reward(cfg: RewardConfig, trust_remote_code: bool = False) -> CompositeReward:
    return CompositeReward([(spec, build_judge(spec, trust_remote_code)) for spec in cfg.components])
