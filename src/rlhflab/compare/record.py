"""A comparison's record: ``compare.json`` (the plan and each run's cost) and its run directories read back.

``compare.json`` holds the plan (presets, steps, seeds, one entry per run, the judge every run is scored by, PPO-RM's
reward model and its held-out pairwise accuracy) and, per run, its process's wall-clock time and peak resident
memory, which only the parent process could measure. Everything else (metrics, evaluation, ``eval/heldout.json``)
is read from the run directories, so the report can be written again at any time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.compare.planning import LEARNED_REWARD
from rlhflab.reporting.rundir import read_jsonl, read_summary

STATE_FILE = "compare.json"
HELDOUT_FILE = "heldout.json"  # in each run's eval/: written by rlhflab.compare.heldout


def read_state(output_dir: Path) -> dict:
    path = output_dir / STATE_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    return data if isinstance(data, dict) else {}


def write_state(output_dir: Path, state: dict) -> None:
    tmp = output_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(output_dir / STATE_FILE)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    return data if isinstance(data, dict) else {}


def reward_model_record(run_dir: Path) -> dict:
    """A finished reward model's held-out pairwise accuracy (before and after training), loss and pairs."""
    summary = read_json(run_dir / "eval" / "summary.json")
    after, before = summary.get("after") or {}, summary.get("before") or {}
    if "accuracy" not in after:
        return {}
    return {
        "accuracy": after["accuracy"],
        "accuracy_before": before.get("accuracy"),
        "loss": after.get("loss"),
        "num_pairs": after.get("num_pairs"),
    }


@dataclass
class RunResult:
    name: str
    algo: str
    seed: int
    run_dir: Path
    metrics: list[dict]
    summary: dict | None
    cost: dict
    heldout: dict | None = None  # eval/heldout.json: held-out KL and the comparison judge's scores
    steps: int | None = None  # steps planned

    def held_out(self, key: str, side: str = "after"):
        """A held-out number: the comparison judge's score and verdict from eval/heldout.json when measured, else
        the run's own evaluation's (whose score is another judge's for PPO-RM: left out)."""
        if self.heldout and key in self.heldout.get(side, {}):
            return self.heldout[side][key]
        if key == "score_mean" and self.algo in LEARNED_REWARD:
            return None
        return (self.summary or {}).get(side, {}).get(key)

    def series(self, key: str) -> list[float]:
        return [float(row[key]) if isinstance(row.get(key), (int, float)) else math.nan for row in self.metrics]

    def tail_mean(self, key: str) -> float:
        """Mean of ``key`` over the last eighth of the steps (at least one): the end of training, less noisy."""
        values = [v for v in self.series(key) if math.isfinite(v)]
        tail = values[-max(1, len(values) // 8) :]
        return sum(tail) / len(tail) if tail else math.nan


def load_results(output_dir: Path, state: dict) -> list[RunResult]:
    results = []
    for name, info in state.get("runs", {}).items():
        run_dir = output_dir / info.get("dir", name)
        results.append(
            RunResult(
                name,
                info["algo"],
                info["seed"],
                run_dir,
                read_jsonl(run_dir / "metrics.jsonl"),
                read_summary(run_dir),
                state.get("costs", {}).get(name, {}),
                read_json(run_dir / "eval" / HELDOUT_FILE) or None,
                info.get("steps", state.get("steps")),
            )
        )
    return results


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with fewer than two values); NaNs are left out."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class AlgoRow:
    """The final table's numbers for one algorithm (means over its seeds)."""

    algo: str
    seeds: int
    finished: int
    score: tuple[float, float | None]  # the comparison judge's held-out score
    positive_share: float  # the comparison judge's verdict
    kl_end: tuple[float, float | None]  # training batches, last eighth of the steps (online algorithms only)
    distinct_2: float
    ref_perplexity: float
    time_per_step: float
    peak_rss_mib: float
    train_seconds: float
    kl_heldout: tuple[float, float | None] = (math.nan, None)  # on the policy's own held-out completions
    judges: dict[str, float] = field(default_factory=dict)  # {eval judge: positive share}

    @property
    def kl(self) -> tuple[float, float | None]:
        """The held-out KL where measured (every algorithm alike), else the training batches' (older reports)."""
        return self.kl_heldout if math.isfinite(self.kl_heldout[0]) else self.kl_end


def eval_judges(results: list[RunResult]) -> list[str]:
    """Names of the second judges (eval.judges) the runs' evaluations report, in order."""
    names: dict[str, None] = {}
    for r in results:
        for key in (r.summary or {}).get("after", {}):
            if key.startswith("judge/") and key.endswith("_positive_share"):
                names[key.removeprefix("judge/").removesuffix("_positive_share")] = None
    return list(names)


def algo_rows(results: list[RunResult], algos: list[str]) -> list[AlgoRow]:
    rows = []
    judges = eval_judges(results)
    for algo in algos:
        runs = [r for r in results if r.algo == algo]
        done = [r for r in runs if r.summary]
        after = [r.summary["after"] for r in done]

        def avg(values):
            return mean_std(values)[0]

        rows.append(
            AlgoRow(
                algo=algo,
                seeds=len(runs),
                finished=len(done),
                score=mean_std([r.held_out("score_mean") for r in done]),
                positive_share=avg([r.held_out("positive_share") for r in done]),
                kl_end=mean_std([r.tail_mean("objective/kl") for r in runs if r.metrics]),
                distinct_2=avg([a.get("distinct_2") for a in after]),
                ref_perplexity=avg([a.get("ref_perplexity") for a in after]),
                time_per_step=avg([v for r in runs for v in r.series("time/step")]),
                peak_rss_mib=avg([r.cost.get("peak_rss_mib") for r in runs]),
                train_seconds=avg([sum(v for v in r.series("time/step") if math.isfinite(v)) for r in runs]),
                kl_heldout=mean_std([(r.heldout or {}).get("kl", {}).get("mean") for r in done]),
                judges={j: avg([a.get(f"judge/{j}_positive_share") for a in after]) for j in judges},
            )
        )
    return rows


def before_row(results: list[RunResult]) -> dict | None:
    """The starting model's evaluation (the same for every algorithm of a seed), averaged over the runs."""
    done = [r for r in results if r.summary]
    if not done:
        return None
    out = {k: mean_std([r.held_out(k, "before") for r in done])[0] for k in ("score_mean", "positive_share")}
    for key in ("distinct_2", "ref_perplexity"):
        out[key] = mean_std([r.summary["before"].get(key) for r in done])[0]
    for judge in eval_judges(results):
        out[f"judge/{judge}"] = mean_std([r.summary["before"].get(f"judge/{judge}_positive_share") for r in done])[0]
    return out
