"""The comparison's six plots: score vs samples and vs time, the reward–KL frontier, KL, time per step, memory.

Curves are means over seeds with a min–max band; each algorithm keeps its colour in every plot and table. Each
``plot_*`` draws one PNG and returns its number of subplots (1), as :func:`rlhflab.reporting.plots.try_plot` expects.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhflab.compare.planning import LABELS, LEARNED_REWARD, OFFLINE
from rlhflab.compare.record import AlgoRow, RunResult, mean_std
from rlhflab.reporting.plots import Plot, new_figure, smooth, style_axes, try_plot

COLORS = {"ppo": "#1f77b4", "rloo": "#ff7f0e", "grpo": "#2ca02c", "dpo": "#9467bd", "ppo-rm": "#d62728"}


def seed_mean(
    runs: list[RunResult], key: str, cumulative: bool = False
) -> tuple[list[float], list[float], list[float]]:
    """Per-step mean over seeds and the min / max band (steps all runs reached)."""
    curves = []
    for run in runs:
        values = run.series(key)
        if cumulative:
            total, acc = 0.0, []
            for v in values:
                total += v if math.isfinite(v) else 0.0
                acc.append(total)
            values = acc
        if values:
            curves.append(values)
    if not curves:
        return [], [], []
    n = min(len(c) for c in curves)
    columns = [[c[i] for c in curves] for i in range(n)]
    mean = [mean_std(col)[0] for col in columns]
    low = [min(col) for col in columns]
    high = [max(col) for col in columns]
    return mean, low, high


def new_axes():
    """A 6 × 3.6 inch figure with one subplot: two of them side by side fill the page's grid."""
    fig = new_figure(6.0, 3.6, left=0.13, right=0.97, bottom=0.15, top=0.86)
    return fig, fig.add_subplot(1, 1, 1)


def draw_curves(ax, by_algo: dict[str, list[RunResult]], key: str, x_of) -> None:
    """One line per algorithm: mean over seeds (smoothed when long), faint raw mean, min–max band over seeds."""
    for algo, runs in by_algo.items():
        mean, low, high = seed_mean(runs, key)
        if not mean:
            continue
        xs = x_of(algo, runs, len(mean))
        color = COLORS[algo]
        label = f"{LABELS[algo]}" + (f" (mean of {len(runs)} seeds)" if len(runs) > 1 else "")
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
        if len(mean) >= 20:
            ax.plot(xs, mean, color=color, alpha=0.25, linewidth=1)
            ax.plot(xs, smooth(mean, max(2, len(mean) // 15)), color=color, linewidth=2.2, label=label)
        else:
            ax.plot(xs, mean, color=color, linewidth=2, marker="o", markersize=3, label=label)
    ax.legend(fontsize=9, frameon=False, loc="best")


def plot_score_vs_samples(by_algo, batch: int, path: Path) -> int:
    fig, ax = new_axes()
    draw_curves(ax, by_algo, "objective/scores", lambda algo, runs, n: [(i + 1) * batch for i in range(n)])
    style_axes(
        ax, "completions sampled so far", "mean judge score of the batch", title="Judge score vs sampled completions"
    )
    fig.savefig(path, format="png")
    return 1


def plot_score_vs_time(by_algo, path: Path) -> int:
    fig, ax = new_axes()

    def x_of(algo, runs, n):
        return seed_mean(runs, "time/step", cumulative=True)[0][:n]

    draw_curves(ax, by_algo, "objective/scores", x_of)
    style_axes(
        ax, "training time (s, sum of step times)", "mean judge score of the batch", title="Judge score vs wall-clock"
    )
    fig.savefig(path, format="png")
    return 1


def plot_kl_vs_samples(by_algo, batch: int, path: Path) -> int:
    fig, ax = new_axes()
    draw_curves(ax, by_algo, "objective/kl", lambda algo, runs, n: [(i + 1) * batch for i in range(n)])
    style_axes(ax, "completions sampled so far", "nats per completion (summed k1)", title="KL from the starting model")
    fig.savefig(path, format="png")
    return 1


def plot_frontier(by_algo, rows: list[AlgoRow], before: dict | None, path: Path) -> int:
    """Per-step (KL, score) dots and the smoothed path through them (the judge-trained algorithms: ``by_algo``),
    and every algorithm's held-out end point (held-out KL where measured)."""
    fig, ax = new_axes()
    for algo, runs in by_algo.items():
        color = COLORS[algo]
        for run in runs:
            ax.scatter(run.series("objective/kl"), run.series("objective/scores"), s=9, color=color, alpha=0.25)
        kl, score = seed_mean(runs, "objective/kl")[0], seed_mean(runs, "objective/scores")[0]
        if len(kl) >= 2:
            half = max(2, len(kl) // 10)
            ax.plot(smooth(kl, half), smooth(score, half), color=color, linewidth=1.8, alpha=0.8)
    for row in rows:
        if math.isfinite(row.score[0]) and math.isfinite(row.kl[0]):
            ax.errorbar(
                row.kl[0],
                row.score[0],
                xerr=row.kl[1],
                yerr=row.score[1],
                fmt="*",
                markersize=16,
                color=COLORS[row.algo],
                markeredgecolor="black",
                label=f"{LABELS[row.algo]} after training (held-out)",
            )
    if before and math.isfinite(before["score_mean"]):
        ax.scatter(
            [0],
            [before["score_mean"]],
            s=90,
            marker="o",
            color="white",
            edgecolor="black",
            zorder=5,
            label="starting model (held-out)",
        )
    style_axes(ax, "KL from the starting model (nats per completion)", "judge score", title="Reward–KL frontier")
    ax.legend(fontsize=8, frameon=False, loc="best", markerscale=0.7)
    fig.savefig(path, format="png")
    return 1


TIME_PARTS = (
    ("time/generate", "generate", "#4c72b0"),
    ("time/score", "judge", "#dd8452"),
    ("time/forward", "logprobs / values", "#55a868"),
    ("time/update", "update", "#c44e52"),
)


def plot_time_per_step(by_algo, path: Path) -> int:
    """Stacked bars: mean seconds per step in generation, judging, scoring forward passes and updates."""
    fig, ax = new_axes()
    algos = list(by_algo)
    bottoms = [0.0] * len(algos)
    for key, label, color in TIME_PARTS:
        heights = [mean_std([v for r in by_algo[a] for v in r.series(key)])[0] for a in algos]
        heights = [h if math.isfinite(h) else 0.0 for h in heights]
        ax.bar([LABELS[a] for a in algos], heights, bottom=bottoms, color=color, label=label, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    totals = [mean_std([v for r in by_algo[a] for v in r.series("time/step")])[0] for a in algos]
    unsplit = [i for i, total in enumerate(totals) if bottoms[i] == 0 and math.isfinite(total)]  # DPO: pairs
    if unsplit:
        ax.bar([LABELS[algos[i]] for i in unsplit], [totals[i] for i in unsplit], color="#8c8c8c", width=0.6,
               label="step (not split)")  # fmt: skip
    for i, total in enumerate(totals):
        if math.isfinite(total):
            ax.text(i, max(total, bottoms[i]), f"{total:.2f} s", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, max([b for b in bottoms] + [t for t in totals if math.isfinite(t)] + [1e-9]) * 1.5)  # legend room
    style_axes(ax, "", "seconds per step (mean)", title="Time per step")
    ax.grid(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=2)
    fig.savefig(path, format="png")
    return 1


def plot_memory(rows: list[AlgoRow], path: Path) -> int:
    fig, ax = new_axes()
    values = [row.peak_rss_mib if row.peak_rss_mib and math.isfinite(row.peak_rss_mib) else 0.0 for row in rows]
    ax.bar([LABELS[r.algo] for r in rows], values, color=[COLORS[r.algo] for r in rows], width=0.6)
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:,.0f} MiB" if value else "n/a", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, max(values + [1.0]) * 1.18)
    style_axes(ax, "", "MiB", title="Peak memory (resident set size of the run)")
    ax.grid(False)
    fig.savefig(path, format="png")
    return 1


def write_plots(output_dir: Path, results: list[RunResult], rows, before, batch: int) -> list[Plot]:
    out = output_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    by_algo: dict[str, list[RunResult]] = {}
    for r in results:
        if r.metrics:
            by_algo.setdefault(r.algo, []).append(r)
    # training-batch curves: scores only of the algorithms trained on the judge (PPO-RM's are its reward model's),
    # KL of those that sample (DPO: none)
    judged = {a: runs for a, runs in by_algo.items() if a not in OFFLINE and a not in LEARNED_REWARD}
    sampling = {a: runs for a, runs in by_algo.items() if a not in OFFLINE}
    left_out = [LABELS[a] for a in by_algo if a not in judged]
    but = f" Not {' and '.join(left_out)}: not trained on this judge's scores." if left_out else ""
    jobs = [
        (
            "score_vs_samples",
            "Judge score vs sampled completions",
            lambda p: plot_score_vs_samples(judged, batch, p),
            "The training batch's mean judge score; the x axis is the budget spent. Equal x = equal samples." + but,
        ),
        (
            "score_vs_time",
            "Judge score vs wall-clock",
            lambda p: plot_score_vs_time(judged, p),
            "The same curves against training time (sum of step times: no model loading, no evaluation).",
        ),
        (
            "frontier",
            "Reward–KL frontier",
            lambda p: plot_frontier(judged, rows, before, p),
            "Dots: one training step each (batch score vs its KL from the starting model); lines: their smoothed path. "
            "Stars: the judge's held-out score after training at the held-out KL (where measured, else the KL of the "
            "last steps), every algorithm. Up and to the left is better." + but,
        ),
        (
            "kl",
            "KL vs sampled completions",
            lambda p: plot_kl_vs_samples(sampling, batch, p),
            "How far each policy moved from the starting model (summed k1 per completion)."
            + (
                " DPO samples nothing while training: its KL is the held-out one in the table."
                if "dpo" in by_algo
                else ""
            ),
        ),
        (
            "time_per_step",
            "Time per step",
            lambda p: plot_time_per_step(by_algo, p),
            "Mean seconds per step, split into generation, judging, log-prob/value forward passes and updates."
            + (" DPO's step (a batch of pairs) is not split." if "dpo" in by_algo else ""),
        ),
        (
            "memory",
            "Peak memory",
            lambda p: plot_memory(rows, p),
            "Peak resident set size of each run's process (model, optimizer, activations, Python), mean over "
            "seeds; host memory only: on a GPU, device memory is not in it.",
        ),
    ]
    written = []
    empty = {"score_vs_samples": not judged, "score_vs_time": not judged, "kl": not sampling}
    for name, title, draw, caption in jobs if by_algo else []:
        if empty.get(name):
            continue
        path = out / f"{name}.png"
        columns = try_plot("compare", name, draw, path)
        if columns:
            written.append(Plot(title, path, columns, caption))
    return written
