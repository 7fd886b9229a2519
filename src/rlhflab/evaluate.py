"""Before/after evaluation on held-out prompts: the starting (reference) model vs the trained policy.

Writes ``eval/before.jsonl``, ``eval/after.jsonl`` (prompt, completion, score per line) and ``eval/summary.json``
(score_mean, positive_share, distinct_1, distinct_2, mean_length, eos_rate, ref_perplexity, kl for each side), and
prints a table a newcomer can read. ``kl`` is the policy's KL from the starting model on its own held-out completions:
the mean over completions of Σ_t (log π − log π_ref) at the sampling temperature (summed k1, an unbiased estimate of
the sequence-level KL(π ‖ π_ref), as the training metric ``objective/kl`` on training batches); 0 for the starting
model itself. DPO samples nothing while training, so this is its only KL.

``positive_share`` is the verdict of the training reward's first judge (a lexicon, classifier or naive_bayes
component; :func:`judge_verdicts`), each judge's own as ``positive_share/<name>``: the composite score would count
its shaping terms (the imdb presets' repetition term adds ~0.45 to any text). A reward without a judge component
falls back to score > ``eval.positive_threshold``.
"""

from __future__ import annotations

import json
import math
import textwrap
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import torch

from rlhflab.config import Config, RewardComponent, load_config
from rlhflab.errors import UserError
from rlhflab.models.forward import response_logprobs
from rlhflab.ops import masked_sum
from rlhflab.rewards.base import Judge, build_judge
from rlhflab.rollout import is_eos, sample_rollout
from rlhflab.session import load_setup

VERDICT_THRESHOLDS = {"lexicon": 0.05, "classifier": 0.5, "naive_bayes": 0.0}
"""A judge calls a text positive above this: VADER compound > 0.05 (VADER's own convention), a classifier's label
probability > 0.5, naive Bayes log-odds > 0 (probability > 0.5)."""


def distinct_n(texts: list[str], n: int) -> float:
    """Unique word n-grams / all word n-grams over every text (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for words in (t.split() for t in texts) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@torch.no_grad()
def sample_and_judge(
    setup, cfg: Config, reward, prompts: list[str], use_reference: bool, seed: int
) -> tuple[list[dict], dict]:
    """Sample eval.samples_per_prompt completions of each prompt (eval.samples_per_listed_prompt of each of
    eval.prompts, when set) and measure them; returns (rows, summary)."""
    roles, device = setup.roles, setup.device
    listed, n_listed = set(cfg.eval.prompts), cfg.eval.samples_per_listed_prompt
    prompts = [p for p in prompts for _ in range(n_listed if n_listed and p in listed else cfg.eval.samples_per_prompt)]
    generator = torch.Generator(device=device).manual_seed(seed)
    rows, nll_sum, n_tokens, lengths, ended, kls = [], 0.0, 0, [], [], []
    batch = cfg.eval.batch_size or cfg.rollout.batch_size
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        if use_reference:
            with roles.reference_model() as model:
                rollout, completions = sample_rollout(
                    model, setup.codec, chunk, cfg, generator, device, roles.stop_together
                )
        else:
            rollout, completions = sample_rollout(
                roles.actor(), setup.codec, chunk, cfg, generator, device, roles.stop_together
            )
        scores, _ = reward(chunk, completions)
        with roles.reference_model() as reference:
            ref_logprobs, _ = response_logprobs(reference, rollout, cfg.rollout.temperature)  # (b, T)
        mask = rollout.response_mask
        if use_reference:
            kls += [0.0] * len(chunk)
        else:
            logprobs, _ = response_logprobs(roles.actor(), rollout, cfg.rollout.temperature)  # (b, T)
            kls += masked_sum(logprobs - ref_logprobs, mask, dim=1).tolist()  # summed k1 per completion
        nll_sum -= masked_sum(ref_logprobs, mask).item()
        n_tokens += int(mask.sum().item())
        lengths += mask.sum(1).tolist()
        ended += (is_eos(rollout.response_ids, setup.codec.eos_ids) & mask).any(1).tolist()
        rows += [{"prompt": p, "completion": c, "score": s} for p, c, s in zip(chunk, completions, scores.tolist())]
    for row, kl in zip(rows, kls):
        row["kl"] = kl
    scores = [row["score"] for row in rows]
    completions = [row["completion"] for row in rows]
    summary = {
        "score_mean": sum(scores) / len(scores),
        "positive_share": sum(s > cfg.eval.positive_threshold for s in scores) / len(scores),
        "distinct_1": distinct_n(completions, 1),
        "distinct_2": distinct_n(completions, 2),
        "mean_length": sum(lengths) / len(lengths),
        "eos_rate": sum(ended) / len(ended),
        "ref_perplexity": math.exp(nll_sum / max(n_tokens, 1)),
        "kl": sum(kls) / len(kls),
        "num_samples": len(rows),
    }
    return rows, summary


def judge_verdicts(
    components: list[RewardComponent], trust_remote_code: bool = False
) -> list[tuple[str, Judge, float]]:
    """(name, judge, threshold) for each reward component that is a judge (lexicon, classifier, naive_bayes), in
    order; a classifier is rebuilt to output its label's probability whatever it outputs in training."""
    verdicts = []
    for spec in components:
        if spec.kind in VERDICT_THRESHOLDS:
            spec = replace(spec, output="probability") if spec.kind == "classifier" else spec
            verdicts.append((spec.name, build_judge(spec, trust_remote_code), VERDICT_THRESHOLDS[spec.kind]))
    return verdicts


def verdict_shares(verdicts: list[tuple[str, Judge, float]], rows: list[dict]) -> dict[str, float]:
    """``positive_share/<name>``: the share of ``rows`` (prompt, completion) each judge calls positive. Each row's
    ``positive`` becomes the first judge's verdict (the one ``positive_share`` reports)."""
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    shares = {}
    for i, (name, judge, threshold) in enumerate(verdicts):
        positive = [v > threshold for v in judge(prompts, completions)]
        shares[f"positive_share/{name}"] = sum(positive) / len(rows)
        if i == 0:
            for row, verdict in zip(rows, positive):
                row["positive"] = verdict
    return shares


def build_eval_judges(cfg: Config) -> tuple[list, list]:
    """(the training reward's judges with their verdict thresholds, the second judges of eval.judges), built once."""
    second = [(spec.name, build_judge(spec, cfg.model.trust_remote_code)) for spec in cfg.eval.judges]
    return judge_verdicts(cfg.reward.components, cfg.model.trust_remote_code), second


def judge_rows(rows: list[dict], summary: dict, judges: tuple[list, list]) -> None:
    """Add each judge's verdict share (and the second judges' scores per row and their means) to ``summary``."""
    verdicts, second = judges
    shares = verdict_shares(verdicts, rows)  # marks each row's "positive": the first judge's verdict
    if shares:  # without a judge component, score > eval.positive_threshold stays
        summary["positive_share"] = next(iter(shares.values()))
        summary.update(shares)
    for name, judge in second:  # second judges: did the policy learn the task or the training judge's quirks?
        values = judge([r["prompt"] for r in rows], [r["completion"] for r in rows])
        for row, value in zip(rows, values):
            row[f"judge/{name}"] = value
        summary[f"judge/{name}_mean"] = sum(values) / len(values)
        summary[f"judge/{name}_positive_share"] = sum(v > 0 for v in values) / len(values)


class HeldOutProbe:
    """eval.every: the policy on the held-out prompts during training, measured exactly as the final evaluation's
    "after" side (same prompts, seed and judges), as ``eval/<summary key>`` metrics plus ``time/eval``. The final
    evaluation reuses the last probe's rows when no update came after it (:meth:`result_at`)."""

    def __init__(self, setup, cfg: Config, reward, main_process: bool = True):
        self.setup, self.cfg, self.reward, self.main_process = setup, cfg, reward, main_process
        self.judges = build_eval_judges(cfg) if main_process else ([], [])
        self.latest: tuple[int, list[dict], dict] | None = None  # (step, rows, summary) of the last probe

    def __call__(self, step: int) -> dict[str, float]:
        """{} on the other processes of a sharded model (they only join the sampling passes)."""
        started = time.perf_counter()
        setup, cfg = self.setup, self.cfg
        rows, summary = sample_and_judge(setup, cfg, self.reward, setup.eval_prompts, False, seed=cfg.seed + 7)
        self.latest = (step, rows, summary)
        if not self.main_process:
            return {}
        judge_rows(rows, summary, self.judges)
        return {**{f"eval/{k}": v for k, v in summary.items()}, "time/eval": time.perf_counter() - started}

    def result_at(self, step: int) -> tuple[list[dict], dict] | None:
        """The rows and summary of the probe taken after ``step``'s update, if the last probe was that one."""
        return self.latest[1:] if self.latest is not None and self.latest[0] == step else None


def evaluate_run(
    run_dir: Path, cfg: Config, setup, reward, main_process: bool = True, after: tuple[list[dict], dict] | None = None
) -> dict:
    """Evaluate the reference model and the trained policy of a loaded setup; write and print the results.

    ``after``: the policy's side already measured (rows and summary judged, from :class:`HeldOutProbe` after the
    last update), which is then not sampled again.
    ``main_process=False`` (the other processes of a model sharded with FSDP, whose every forward needs all of
    them): run the same sampling passes, then return ``{}`` without judging further, writing or printing."""
    prompts = setup.eval_prompts
    if main_process:
        print(f"evaluating the starting model and the trained policy on {len(prompts)} held-out prompts ...")
    before, before_summary = sample_and_judge(setup, cfg, reward, prompts, use_reference=True, seed=cfg.seed + 7)
    to_judge = [(before, before_summary)]
    if after is None:
        after = sample_and_judge(setup, cfg, reward, prompts, use_reference=False, seed=cfg.seed + 7)
        to_judge.append(after)
    elif main_process:  # the last probe measured this very policy with the same prompts, seed and judges
        print("(the trained policy's side is the held-out evaluation eval.every took after the last step)")
    if not main_process:
        return {}
    judges = build_eval_judges(cfg)
    for rows, side_summary in to_judge:
        judge_rows(rows, side_summary, judges)
    after, after_summary = after
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in (("before", before), ("after", after)):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    summary = {"before": before_summary, "after": after_summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(before, after))
    print(format_summary(summary, cfg.eval.positive_threshold))
    print(format_per_prompt(before, after, cfg.eval.positive_threshold))
    print(f"(all completions in {out}/before.jsonl and after.jsonl; numbers in {out}/summary.json)")
    return summary


def format_table(before: list[dict], after: list[dict], width: int = 100, samples_per_prompt: int = 2) -> str:
    """Each held-out prompt's first ``samples_per_prompt`` completions before and after; the per-prompt table and
    the jsonl files hold the rest (all 208 of the SmolLM2 presets made 624 lines on a terminal)."""
    lines = ["", f"{'held-out prompt':<56} {'before':>8} {'after':>8}", "-" * 74]
    shown = Counter()
    for b, a in zip(before, after):
        shown[b["prompt"]] += 1
        if shown[b["prompt"]] > samples_per_prompt:
            continue
        lines.append(f"{b['prompt'][:56]:<56} {b['score']:>+8.2f} {a['score']:>+8.2f}")
        for label, row in (("before", b), ("after", a)):
            text = textwrap.shorten(row["completion"].replace("\n", " ") or "(empty)", width - 12, placeholder=" …")
            lines.append(f"    {label + ':':<8}{text}")
    most = max(shown.values(), default=0)
    if most > samples_per_prompt:
        lines.append(f"(showing {samples_per_prompt} of {most} samples per prompt at most)")  # where all are: below
    return "\n".join(lines)


def format_per_prompt(before: list[dict], after: list[dict], threshold: float, width: int = 100) -> str:
    """The positive share and mean score of each held-out prompt's samples, before and after."""
    from rlhflab.report import per_prompt_rows

    lines = ["", f"{'per prompt (positive share, mean score)':<52} {'n':>4} {'before':>20} {'after':>20}"]
    for prompt, n, share_b, share_a, mean_b, mean_a in per_prompt_rows(before, after, threshold):
        short = textwrap.shorten(prompt, 52, placeholder=" …")
        lines.append(f"{short:<52} {n:>4} {share_b:>7.0%} {mean_b:>+12.2f} {share_a:>7.0%} {mean_a:>+12.2f}")
    return "\n".join(lines)


def format_summary(summary: dict, threshold: float) -> str:
    from rlhflab.report import summary_rows  # the labels and formats of the report's table

    b, a = summary["before"], summary["after"]
    lines = ["", f"{'':<40} {'before':>10} {'after':>10}"]
    for label, key, fmt in summary_rows(threshold, b):
        if key in b and key in a:  # an evaluation written by an older rlhflab may lack a row
            lines.append(f"{label:<40} {fmt.format(b[key]):>10} {fmt.format(a[key]):>10}")
    return "\n".join(lines)


def find_weights(run_dir: Path) -> Path:
    """final/ when training finished, else the newest complete checkpoint."""
    if (run_dir / "final" / "adapter_model.safetensors").is_file():
        return run_dir / "final"
    checkpoints = sorted((run_dir / "checkpoints").glob("step-*"))
    if checkpoints:
        return checkpoints[-1]
    raise UserError(f"--run: {run_dir} has no final/ adapters and no checkpoint to evaluate")


def eval_command(run_dir: Path) -> dict:
    """``rlhflab eval --run DIR``: reload the run's config and adapters, then evaluate again."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--run: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    if cfg.algorithm.name == "rm":
        raise UserError(
            f"--run: {run_dir} holds a reward model (rlhflab rm); its held-out accuracy is in eval/summary.json"
        )
    weights = find_weights(run_dir)
    setup = load_setup(cfg, with_critic=False)
    setup.roles.load(weights)
    print(f"loaded adapters from {weights}")
    summary = evaluate_run(run_dir, cfg, setup, setup.reward)
    from rlhflab.report import write_outputs

    write_outputs(run_dir)  # refresh the report and model card with the new eval
    return summary
