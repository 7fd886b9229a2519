"""The comparison's numbers and sentences: the final table, the headline, the setup, the runs and the samples."""

from __future__ import annotations

import math

from rlhflab.compare.planning import LABELS
from rlhflab.compare.record import AlgoRow, RunResult
from rlhflab.reporting.describe import describe_model, describe_rewards
from rlhflab.reporting.rundir import read_config, read_jsonl, section
from rlhflab.reporting.text import fmt, format_duration


def pm(pair: tuple[float, float | None], spec: str, std_spec: str = "{:.3f}") -> str:
    """'mean ± std' ('mean' alone with one seed)."""
    mean, std = pair
    text = fmt(mean, spec)
    return text + (" ± " + std_spec.format(std) if std is not None and math.isfinite(mean) else "")


TABLE_HEADER = [
    "algorithm",
    "score after (mean ± std over seeds)",
    "positive share",
    "KL at end (nats)",
    "distinct-2",
    "ref perplexity",
    "time/step",
    "peak RSS",
]


def final_table(rows: list[AlgoRow], before: dict | None) -> list[list[str]]:
    out = []
    if before:
        out.append(
            [
                "starting model",
                fmt(before["score_mean"], "{:+.3f}"),
                fmt(before["positive_share"], "{:.0%}"),
                "0",
                fmt(before["distinct_2"], "{:.3f}"),
                fmt(before["ref_perplexity"], "{:.2f}"),
                "",
                "",
            ]
        )
    for row in rows:
        name = LABELS[row.algo] + ("" if row.finished == row.seeds else f" ({row.finished}/{row.seeds} runs done)")
        out.append(
            [
                name,
                pm(row.score, "{:+.3f}"),
                fmt(row.positive_share, "{:.0%}"),
                pm(row.kl_end, "{:.2f}", "{:.2f}"),
                fmt(row.distinct_2, "{:.3f}"),
                fmt(row.ref_perplexity, "{:.2f}"),
                fmt(row.time_per_step, "{:.2f} s"),
                fmt(row.peak_rss_mib, "{:,.0f} MiB"),
            ]
        )
    return out


def disturbed_timings(results: list[RunResult], ratio: float = 2.5) -> dict[str, tuple[float, float, float]]:
    """{algo: (fastest, median, slowest) step time} for algorithms with a run whose median step took more than
    ``ratio`` × its fastest (the first step, with its warm-up, left out): other load on the machine, not the
    algorithm. On a quiet machine the ratio stays below 1.5."""
    out = {}
    for r in results:
        times = sorted(v for v in r.series("time/step")[1:] if math.isfinite(v))
        if len(times) >= 4 and times[len(times) // 2] > ratio * times[0]:
            out.setdefault(r.algo, (times[0], times[len(times) // 2], times[-1]))
    return out


def headline(rows: list[AlgoRow], before: dict | None, noisy: dict | None = None) -> list[str]:
    """Sentences that answer the question: who reached which score, at what KL, time and memory."""
    noisy = noisy or {}
    ranked = sorted((r for r in rows if math.isfinite(r.score[0])), key=lambda r: -r.score[0])
    if not ranked:
        return ["No run has been evaluated yet."]
    parts = []
    start = f" (starting model {before['score_mean']:+.3f})" if before and math.isfinite(before["score_mean"]) else ""
    for i, r in enumerate(ranked):
        lead = "Highest held-out score: " if i == 0 else "then "
        parts.append(
            f"{lead}{LABELS[r.algo]} {r.score[0]:+.3f} at KL {fmt(r.kl_end[0], '{:.2f}')} nats, "
            f"{fmt(r.time_per_step, '{:.2f}')} s/step ({format_duration(r.train_seconds)} of training), "
            f"{fmt(r.peak_rss_mib, '{:,.0f}')} MiB peak"
        )
    sentences = ["; ".join(parts) + start + "."]
    timed = [r for r in rows if math.isfinite(r.time_per_step) and r.algo not in noisy]
    sized = [r for r in rows if r.peak_rss_mib and math.isfinite(r.peak_rss_mib)]
    if len(timed) > 1:
        fast = min(timed, key=lambda r: r.time_per_step)
        slow = max(timed, key=lambda r: r.time_per_step)
        sentences.append(
            f"Fastest per step: {LABELS[fast.algo]} ({slow.time_per_step / fast.time_per_step:.1f}× faster than "
            f"{LABELS[slow.algo]})."
        )
    if len(sized) > 1:
        small = min(sized, key=lambda r: r.peak_rss_mib)
        big = max(sized, key=lambda r: r.peak_rss_mib)
        if big.peak_rss_mib < 1.05 * small.peak_rss_mib:
            sentences.append(
                f"Peak memory about equal ({small.peak_rss_mib:,.0f}–{big.peak_rss_mib:,.0f} MiB): the model, "
                "libraries and runtime outweigh what each algorithm adds."
            )
        else:
            sentences.append(
                f"Least memory: {LABELS[small.algo]} ({small.peak_rss_mib:,.0f} MiB vs {big.peak_rss_mib:,.0f} MiB "
                f"for {LABELS[big.algo]})."
            )
    if before and math.isfinite(before["distinct_2"]):
        for r in rows:
            if math.isfinite(r.distinct_2) and r.distinct_2 < 0.7 * before["distinct_2"]:
                sentences.append(
                    f"{LABELS[r.algo]}'s completions lost much of their variety (distinct-2 {r.distinct_2:.2f}, "
                    f"starting model {before['distinct_2']:.2f}): look at its completions below."
                )
    for algo, (fastest, median, slowest) in noisy.items():
        sentences.append(
            f"{LABELS[algo]}'s step times ranged from {fastest:.2f} s to {slowest:.2f} s (median {median:.2f} s): "
            "the machine was busy with other work, so its times are not comparable (delete its run directory and "
            "run the same command on a quiet machine)."
        )
    seeds = max(r.seeds for r in rows)
    if seeds < 2:
        sentences.append("One seed only: run with --seeds 3 or more to see the spread between runs.")
    return sentences


def describe_setup(state: dict, results: list[RunResult]) -> str:
    cfg = next((read_config(r.run_dir) for r in results if (r.run_dir / "config.yaml").is_file()), {})
    model = describe_model(str(section(cfg, "model").get("name", "?"))) if cfg else "?"
    ks = []
    for algo in state.get("algos", []):
        k = next(
            (
                section(read_config(r.run_dir), "rollout").get("samples_per_prompt")
                for r in results
                if r.algo == algo and (r.run_dir / "config.yaml").is_file()
            ),
            None,
        )
        if k:
            ks.append(f"{LABELS[algo]} {state['batch_size'] // k} prompts × {k}")
    seeds = state.get("seeds", [])
    return (
        f"Presets {', '.join(state.get('presets', {}).values())} on {model}, rewarded by {describe_rewards(cfg)}. "
        f"Every algorithm got the same budget: {state.get('steps')} steps × {state.get('batch_size')} completions = "
        f"{state.get('samples_per_run')} sampled completions ({'; '.join(ks)} per step), the same prompt source and "
        f"judge, and the same held-out evaluation; seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}."
    )


def run_rows(results: list[RunResult], steps: int) -> list[list[str]]:
    rows = []
    for r in results:
        train_s = sum(v for v in r.series("time/step") if math.isfinite(v))
        rows.append(
            [
                r.name,
                LABELS[r.algo],
                str(r.seed),
                f"{len(r.metrics)}/{steps}",
                fmt(r.summary["after"].get("score_mean") if r.summary else None, "{:+.3f}"),
                format_duration(train_s) if r.metrics else "",
                format_duration(r.cost["wall_s"]) if r.cost.get("wall_s") else "n/a",
                fmt(r.cost.get("peak_rss_mib"), "{:,.0f} MiB"),
            ]
        )
    return rows


RUN_HEADER = ["run directory", "algorithm", "seed", "steps", "score after", "training", "wall (process)", "peak RSS"]


def sample_columns(results: list[RunResult], algos: list[str], n: int) -> tuple[list[str], list[list[tuple]]]:
    """First ``n`` held-out prompts (one completion each) of the first seed: before, then each algorithm after."""
    first_seed = min((r.seed for r in results), default=None)
    runs = {r.algo: r for r in results if r.seed == first_seed}
    header, columns = [], []
    source = next((runs[a] for a in algos if a in runs and (runs[a].run_dir / "eval/before.jsonl").is_file()), None)
    if source is None:
        return [], []

    def first_per_prompt(rows):
        seen, out = set(), []
        for row in rows:
            if row.get("prompt") not in seen:
                seen.add(row.get("prompt"))
                out.append(row)
        return out[:n]

    header.append("starting model")
    columns.append(first_per_prompt(read_jsonl(source.run_dir / "eval" / "before.jsonl")))
    for algo in algos:
        if algo in runs:
            header.append(f"{LABELS[algo]} after")
            columns.append(first_per_prompt(read_jsonl(runs[algo].run_dir / "eval" / "after.jsonl")))
    return header, columns
