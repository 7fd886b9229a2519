"""What a comparison measures on a finished run beyond its own evaluation, the same way for every algorithm.

``python -m rlhflab.compare.heldout --run DIR --judge JSON`` loads the run (its config.yaml and final/ adapter) and
writes ``DIR/eval/heldout.json``:

- ``kl``: the trained policy's KL from the starting model on its own held-out completions. The evaluation's
  sampling is repeated (the same prompts × ``eval.samples_per_prompt``, the same seed: the completions of
  ``eval/after.jsonl``, ``same_completions`` says what share came out identical) and each completion's
  Σ_t (log π − log π_ref) at the rollout temperature is taken (summed k1 per completion, an unbiased estimate of
  the sequence-level KL(π ‖ π_ref); the training metric ``objective/kl`` is the same estimate on training
  batches). DPO samples nothing while training, so this is its only KL; for the online algorithms it stands
  beside the training one.
- ``before`` / ``after``: ``eval/before.jsonl`` and ``eval/after.jsonl`` scored again by the comparison's judge
  (``--judge``: the reward section that the judge-trained presets share): ``score_mean`` and ``positive_share``
  (the first judge component's verdict, as in :func:`rlhflab.evaluate.evaluate_run`). PPO against a learned reward
  model is evaluated with that model as its score; here it is scored by the judge of the others.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from rlhflab.compare.record import HELDOUT_FILE
from rlhflab.config import Config, RewardConfig, from_dict, load_config
from rlhflab.errors import UserError
from rlhflab.evaluate import find_weights, judge_verdicts, verdict_shares
from rlhflab.models.forward import response_logprobs
from rlhflab.ops import masked_sum
from rlhflab.reporting.rundir import read_jsonl
from rlhflab.rewards.base import build_reward
from rlhflab.rollout import sample_rollout
from rlhflab.session import load_setup


@torch.no_grad()
def sequence_kl(roles, rollout, temperature: float) -> torch.Tensor:
    """Σ_t (log π − log π_ref) (B,) over each completion's tokens (summed k1) at the sampling temperature."""
    logprobs, _ = response_logprobs(roles.actor(), rollout, temperature)  # (B, T)
    with roles.reference_model() as reference:
        ref_logprobs, _ = response_logprobs(reference, rollout, temperature)  # (B, T)
    return masked_sum(logprobs - ref_logprobs, rollout.response_mask, dim=1)  # (B,)


@torch.no_grad()
def policy_kl(setup, cfg: Config) -> tuple[list[float], list[str]]:
    """Summed k1 (log π − log π_ref) of each held-out completion sampled from the policy, and the completions."""
    roles, device = setup.roles, setup.device
    prompts = [p for p in setup.eval_prompts for _ in range(cfg.eval.samples_per_prompt)]
    generator = torch.Generator(device=device).manual_seed(cfg.seed + 7)  # evaluate_run's: the same completions
    batch = cfg.eval.batch_size or cfg.rollout.batch_size
    kls, texts = [], []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        rollout, completions = sample_rollout(
            roles.actor(), setup.codec, chunk, cfg, generator, device, roles.stop_together
        )
        kls += sequence_kl(roles, rollout, cfg.rollout.temperature).tolist()
        texts += completions
    return kls, texts


def judge_side(rows: list[dict], judge: RewardConfig, cfg: Config) -> dict:
    """The judge's mean score and verdict (positive share) over one side's evaluation rows."""
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    scores, _ = build_reward(judge, cfg.model.trust_remote_code)(prompts, completions)  # (N,)
    shares = verdict_shares(judge_verdicts(judge.components, cfg.model.trust_remote_code), [dict(r) for r in rows])
    positive = next(iter(shares.values()), None)
    if positive is None:  # no judge component: score above eval.positive_threshold, as the evaluation does
        positive = sum(s > cfg.eval.positive_threshold for s in scores.tolist()) / len(rows)
    return {
        "score_mean": scores.mean().item(),
        "positive_share": positive,
        **shares,
        "num_samples": len(rows),
        "scores": scores.tolist(),  # per row of the side's .jsonl, in order
    }


def measure(run_dir: Path, judge_dict: dict) -> dict:
    """Write and return ``run_dir/eval/heldout.json`` (see the module docstring)."""
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"--run: {run_dir} is not a run directory (no config.yaml)")
    cfg = load_config(run_dir / "config.yaml")
    judge = from_dict(RewardConfig, judge_dict, "reward.")
    sides = {side: read_jsonl(run_dir / "eval" / f"{side}.jsonl") for side in ("before", "after")}
    if not all(sides.values()):
        raise UserError(f"--run: {run_dir} has no evaluation (eval/before.jsonl, eval/after.jsonl) to score")
    setup = load_setup(cfg, with_critic=False)
    setup.roles.load(find_weights(run_dir))
    kls, texts = policy_kl(setup, cfg)
    mean = sum(kls) / len(kls)
    std = math.sqrt(sum((k - mean) ** 2 for k in kls) / max(len(kls) - 1, 1))
    same = sum(t == r["completion"] for t, r in zip(texts, sides["after"])) / len(sides["after"])
    out = {
        "judge": judge_dict,
        "kl": {"mean": mean, "std": std, "num_samples": len(kls), "same_completions": same},
        **{side: judge_side(rows, judge, cfg) for side, rows in sides.items()},
    }
    (run_dir / "eval" / HELDOUT_FILE).write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"held-out KL {mean:.3f} nats (± {std:.3f} over {len(kls)} completions, {same:.0%} the evaluation's own); "
        f"judge score {out['before']['score_mean']:+.3f} -> {out['after']['score_mean']:+.3f}"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhflab.compare.heldout", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a finished run directory")
    parser.add_argument("--judge", required=True, help="the reward section to score with, as JSON")
    args = parser.parse_args(argv)
    try:
        measure(Path(args.run), json.loads(args.judge))
    except UserError as err:
        print(f"compare heldout: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
