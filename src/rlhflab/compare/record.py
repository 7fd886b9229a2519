"""A comparison's record: ``compare.json`` (the plan and each run's cost) and its run directories read back.

``compare.json`` holds the plan (presets, steps, seeds, one entry per run) and, per run, its process's wall-clock
time and peak resident memory, which only the parent process could measure. Everything else (metrics, evaluation)
is read from the run directories, so the report can be written again at any time.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from rlhflab.reporting.rundir import read_jsonl, read_summary

STATE_FILE = "compare.json"


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


@dataclass
class RunResult:
    name: str
    algo: str
    seed: int
    run_dir: Path
    metrics: list[dict]
    summary: dict | None
    cost: dict

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
    score: tuple[float, float | None]
    positive_share: float
    kl_end: tuple[float, float | None]
    distinct_2: float
    ref_perplexity: float
    time_per_step: float
    peak_rss_mib: float
    train_seconds: float


def algo_rows(results: list[RunResult], algos: list[str]) -> list[AlgoRow]:
    rows = []
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
                score=mean_std([a.get("score_mean") for a in after]),
                positive_share=avg([a.get("positive_share") for a in after]),
                kl_end=mean_std([r.tail_mean("objective/kl") for r in runs if r.metrics]),
                distinct_2=avg([a.get("distinct_2") for a in after]),
                ref_perplexity=avg([a.get("ref_perplexity") for a in after]),
                time_per_step=avg([v for r in runs for v in r.series("time/step")]),
                peak_rss_mib=avg([r.cost.get("peak_rss_mib") for r in runs]),
                train_seconds=avg([sum(v for v in r.series("time/step") if math.isfinite(v)) for r in runs]),
            )
        )
    return rows


def before_row(results: list[RunResult]) -> dict | None:
    """The starting model's evaluation (the same for every algorithm of a seed), averaged over the runs."""
    befores = [r.summary["before"] for r in results if r.summary]
    if not befores:
        return None
    keys = ("score_mean", "positive_share", "distinct_2", "ref_perplexity")
    return {k: mean_std([b.get(k) for b in befores])[0] for k in keys}
