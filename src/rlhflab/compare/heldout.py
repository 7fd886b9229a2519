"""What a comparison measures on a finished run beyond its own evaluation, the same way for every algorithm.

``python -m rlhflab.compare.heldout --run DIR --judge JSON`` reads the run's evaluation and writes
``DIR/eval/heldout.json``:

- ``kl``: the trained policy's KL from the starting model on its own held-out completions, as the evaluation measured
  it (``eval/summary.json``'s ``after.kl``: summed k1 per completion at the sampling temperature, averaged; see
  :mod:`rlhflab.evaluate`). DPO samples nothing while training, so this is its only KL; for the online algorithms
  it stands beside the training one.
- ``before`` / ``after``: ``eval/before.jsonl`` and ``eval/after.jsonl`` scored again by the comparison's judge
  (``--judge``: the reward section that the judge-trained presets share): ``score_mean`` and ``positive_share``
  (the first judge component's verdict, as in :func:`rlhflab.evaluate.evaluate_run`). PPO against a learned reward
  model is evaluated with that model as its score; here it is scored by the judge of the others.

No model is loaded: the judges read the evaluation's text.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from rlhflab.compare.record import HELDOUT_FILE
from rlhflab.config import Config, RewardConfig, from_dict, load_config
from rlhflab.errors import UserError
from rlhflab.evaluate import judge_verdicts, verdict_shares
from rlhflab.reporting.rundir import read_jsonl
from rlhflab.rewards.base import build_reward


def completion_kl(rows: list[dict]) -> dict | None:
    """Mean and standard deviation over the evaluated completions of their summed k1 (``kl`` of each row of
    eval/after.jsonl); None for an evaluation written before rlhflab measured it."""
    kls = [r["kl"] for r in rows if "kl" in r]
    if len(kls) != len(rows):
        return None
    mean = sum(kls) / len(kls)
    std = math.sqrt(sum((k - mean) ** 2 for k in kls) / max(len(kls) - 1, 1))
    return {"mean": mean, "std": std, "num_samples": len(kls)}


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
    kl = completion_kl(sides["after"])
    if kl is None:
        raise UserError(
            f"--run: {run_dir}'s evaluation has no per-completion KL: evaluate it again (rlhflab eval --run)"
        )
    out = {"judge": judge_dict, "kl": kl, **{side: judge_side(rows, judge, cfg) for side, rows in sides.items()}}
    (run_dir / "eval" / HELDOUT_FILE).write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"held-out KL {kl['mean']:.3f} nats (± {kl['std']:.3f} over {kl['num_samples']} completions); "
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
