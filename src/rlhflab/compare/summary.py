"""The comparison's numbers and sentences: the final table, the headline, the setup, the runs and the samples."""

from __future__ import annotations

import math

from rlhflab.compare.planning import LABELS, LEARNED_REWARD, OFFLINE
from rlhflab.compare.record import AlgoRow, RunResult
from rlhflab.reporting.describe import describe_model, describe_rewards
from rlhflab.reporting.rundir import read_config, read_jsonl, section
from rlhflab.reporting.text import fmt, format_duration


def pm(pair: tuple[float, float | None], spec: str, std_spec: str = "{:.3f}") -> str:
    """'mean ± std' ('mean' alone with one seed)."""
    mean, std = pair
    text = fmt(mean, spec)
    return text + (" ± " + std_spec.format(std) if std is not None and math.isfinite(mean) else "")


JUDGE_KINDS = ("lexicon", "classifier", "naive_bayes")  # reward components that give a verdict (evaluate.py's)


def judge_name(state: dict) -> str:
    """The name of the comparison judge's first verdict-giving component ('vader'), '' when unknown."""
    components = (state.get("judge") or {}).get("components") or []
    return next((c.get("name", "") for c in components if c.get("kind") in JUDGE_KINDS), "")


def table_header(state: dict, judges: list[str]) -> list[str]:
    name = judge_name(state)
    return [
        "algorithm",
        "trained on",
        "score after (mean ± std over seeds)",
        f"{name} positive" if name else "positive share",
        *[f"{j} positive" for j in judges],
        "KL held-out (nats)",
        "KL at end of training",
        "distinct-2",
        "ref perplexity",
        "time/step",
        "peak RSS",
    ]


def trained_on(state: dict, algo: str) -> str:
    """What trained ``algo``'s runs, and on how much: the judge and the budget, the reward model, or the pairs."""
    if algo in OFFLINE:
        info = state.get("offline", {}).get(algo, {})
        return f"pairs, offline: {info.get('steps', '?')} steps × {info.get('pairs_per_step', '?')} pairs"
    samples = f"{state.get('samples_per_run', 0):,} samples"
    if algo in LEARNED_REWARD:
        return f"reward model, {samples}"
    components = (state.get("judge") or {}).get("components") or []
    names = "+".join(c.get("name", "?") for c in components if c.get("weight", 1.0)) or "judge"
    return f"{names}, {samples}"


def final_table(state: dict, rows: list[AlgoRow], before: dict | None, judges: list[str]) -> list[list[str]]:
    out = []
    if before:
        out.append(
            [
                "starting model",
                "",
                fmt(before["score_mean"], "{:+.3f}"),
                fmt(before["positive_share"], "{:.0%}"),
                *[fmt(before.get(f"judge/{j}"), "{:.0%}") for j in judges],
                "0",
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
                trained_on(state, row.algo),
                pm(row.score, "{:+.3f}"),
                fmt(row.positive_share, "{:.0%}"),
                *[fmt(row.judges.get(j), "{:.0%}") for j in judges],
                pm(row.kl_heldout, "{:.2f}", "{:.2f}"),
                "n/a (offline)" if row.algo in OFFLINE else pm(row.kl_end, "{:.2f}", "{:.2f}"),
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
    kl = "held-out KL" if all(math.isfinite(r.kl_heldout[0]) for r in ranked) else "KL"
    for i, r in enumerate(ranked):
        lead = "Highest held-out score: " if i == 0 else "then "
        parts.append(
            f"{lead}{LABELS[r.algo]} {r.score[0]:+.3f} at {kl} {fmt(r.kl[0], '{:.2f}')} nats, "
            f"{fmt(r.time_per_step, '{:.2f}')} s/step ({format_duration(r.train_seconds)} of training), "
            f"{fmt(r.peak_rss_mib, '{:,.0f}')} MiB peak"
        )
    sentences = ["; ".join(parts) + start + "."]
    for judge in next((list(r.judges) for r in rows if r.judges), []):  # the second judges: trained on by none
        shares = sorted(
            (r for r in rows if math.isfinite(r.judges.get(judge, math.nan))), key=lambda r: -r.judges[judge]
        )
        was = fmt((before or {}).get(f"judge/{judge}"), "{:.0%}")
        if shares:
            listed = ", ".join(f"{LABELS[r.algo]} {r.judges[judge]:.0%}" for r in shares)
            sentences.append(f"Held-out judge {judge} (positive share): {listed} (starting model {was}).")
    # steps of pairs (DPO) and of sampled completions are different work: the speed sentence compares the latter
    timed = [r for r in rows if math.isfinite(r.time_per_step) and r.algo not in noisy and r.algo not in OFFLINE]
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
    configs = {r.algo: read_config(r.run_dir) for r in reversed(results) if (r.run_dir / "config.yaml").is_file()}
    cfg = next(iter(configs.values()), {})
    model = describe_model(str(section(cfg, "model").get("name", "?"))) if cfg else "?"
    algos = state.get("algos", [])
    judge = describe_rewards({"reward": state["judge"]}) if state.get("judge") else describe_rewards(cfg)
    ks = []
    for algo in algos:
        k = section(configs.get(algo, {}), "rollout").get("samples_per_prompt")
        if k and algo not in OFFLINE:
            ks.append(f"{LABELS[algo]} {state['batch_size'] // k} prompts × {k}")
    online = [LABELS[a] for a in algos if a not in OFFLINE]
    seeds = state.get("seeds", [])
    out = [f"Presets {', '.join(state.get('presets', {}).values())} on {model}."]
    if online:
        who = "Every algorithm" if len(online) == len(algos) else f"Every online algorithm ({', '.join(online)})"
        out.append(
            f"{who} got the same budget: {state.get('steps')} steps × {state.get('batch_size')} completions = "
            f"{state.get('samples_per_run')} sampled completions ({'; '.join(ks)} per step)."
        )
    for algo, info in state.get("offline", {}).items():
        p = section(configs.get(algo, {}), "preference")
        source = p.get("file") or p.get("dataset") or "?"
        out.append(
            f"{LABELS[algo]} is offline: it trains on preference pairs ({source}), {info['steps']} steps × "
            f"{info['pairs_per_step']} pairs = {info['steps'] * info['pairs_per_step']:,} pairs seen, its preset's "
            "steps; it samples nothing while training, so it has no sample budget to equal."
        )
    trained = [LABELS[a] for a in algos if a not in OFFLINE and a not in LEARNED_REWARD]
    sources = [f"{', '.join(trained)} on the judge, {judge}"] if trained else []
    if any(a in LEARNED_REWARD for a in algos):
        sources.append(f"{', '.join(LABELS[a] for a in algos if a in LEARNED_REWARD)} on {reward_model_text(state)}")
    sources += [f"{LABELS[a]} on the pairs" for a in algos if a in OFFLINE]
    out.append(f"Trained: {'; '.join(sources)}.")
    out.append(
        f"Every run is scored by the same judge ({judge}) on the same held-out evaluation, with the same prompt "
        f"source; seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}."
    )
    return " ".join(out)


def reward_model_text(state: dict) -> str:
    """'the reward model in rm/ (demo-rm, 60 steps, held-out pairwise accuracy 50.0 % → 99.5 % on 200 pairs)'."""
    rm = state.get("reward_model") or {}
    text = f"the reward model in {rm.get('dir', 'rm')}/ ({rm.get('preset', '?')}, {rm.get('steps', '?')} steps"
    if rm.get("accuracy") is not None:
        before = fmt(rm.get("accuracy_before"), "{:.1%} → ")
        text += f", held-out pairwise accuracy {before if before != 'n/a' else ''}{rm['accuracy']:.1%}"
        text += f" on {rm.get('num_pairs', '?')} pairs"
    return text + ")"


def run_rows(results: list[RunResult], steps: int) -> list[list[str]]:
    rows = []
    for r in results:
        train_s = sum(v for v in r.series("time/step") if math.isfinite(v))
        rows.append(
            [
                r.name,
                LABELS[r.algo],
                str(r.seed),
                f"{len(r.metrics)}/{r.steps or steps}",
                fmt(r.held_out("score_mean") if r.summary else None, "{:+.3f}"),
                format_duration(train_s) if r.metrics else "",
                format_duration(r.cost["wall_s"]) if r.cost.get("wall_s") else "n/a",
                fmt(r.cost.get("peak_rss_mib"), "{:,.0f} MiB"),
            ]
        )
    return rows


RUN_HEADER = ["run directory", "algorithm", "seed", "steps", "score after", "training", "wall (process)", "peak RSS"]


def judged_rows(run: RunResult, side: str) -> list[dict]:
    """A side's evaluation rows, each ``score`` the comparison judge's where eval/heldout.json has it."""
    rows = read_jsonl(run.run_dir / "eval" / f"{side}.jsonl")
    scores = (run.heldout or {}).get(side, {}).get("scores")
    if scores and len(scores) == len(rows):
        rows = [{**row, "score": score} for row, score in zip(rows, scores)]
    return rows


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
    columns.append(first_per_prompt(judged_rows(source, "before")))
    for algo in algos:
        if algo in runs:
            header.append(f"{LABELS[algo]} after")
            columns.append(first_per_prompt(judged_rows(runs[algo], "after")))
    return header, columns
