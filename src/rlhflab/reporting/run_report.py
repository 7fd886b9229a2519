"""The run report: ``report.md``, a self-contained ``report.html`` and PNG plots in ``plots/``.

``write_report(run_dir)`` reads only files (``config.yaml``, ``metrics.jsonl``, ``eval/``), never a model, so it
runs in about a second and can be called at the end of training, after ``rlhflab eval``, or on any old run. The
report reads top to bottom: what was trained, the before/after numbers, the training curves, then every held-out
prompt with the starting model's and the trained policy's continuation.

A missing metric key drops its curve (RLOO and GRPO have no critic, so no value panel); a missing ``eval/`` drops
the tables; a panel that fails to draw is skipped with a warning on stderr, never an exception.
"""

from __future__ import annotations

import html
import math
import sys
from dataclasses import dataclass
from pathlib import Path

from rlhflab.errors import UserError
from rlhflab.reporting.describe import (
    describe_algorithm,
    describe_model,
    describe_rewards,
    eval_intro,
    positive_threshold,
)
from rlhflab.reporting.model_card import write_model_card
from rlhflab.reporting.page import (
    CODE_CSS,
    FIGURE_CSS,
    PAGE_CSS,
    PAGE_END,
    TABLE_CSS,
    data_uri,
    inline_code,
    page_start,
    score_class,
    table_row,
    table_start,
    text_or_empty,
)
from rlhflab.reporting.plots import Plot, new_figure, smooth, style_axes, try_plot
from rlhflab.reporting.rundir import read_config, read_jsonl, read_summary, section, series
from rlhflab.reporting.tables import (
    PER_PROMPT_HEADER,
    PER_PROMPT_NOTE,
    SAMPLE_HEADER,
    SUMMARY_HEADER,
    md_evaluation,
    md_sample_rows,
    per_prompt_table,
    sample_rows,
    summary_table,
)
from rlhflab.reporting.text import format_duration, format_score, md_cell, md_table

# ----------------------------------------------------------------------------------------------------------------
# plots


@dataclass
class Axis:
    """One subplot: the metric keys drawn on it share its y scale."""

    ylabel: str
    keys: list[str]


@dataclass
class Panel:
    """One PNG: a title and one or two side-by-side subplots."""

    name: str
    title: str
    axes: list[Axis]


def panels_for(metrics: list[dict]) -> list[Panel]:
    """The report's panels, in reading order; reward components get a panel when there are several."""
    present = {key for row in metrics for key in row}
    reward_keys = sorted(k for k in present if k.startswith("reward/"))
    kl_axes = [Axis("nats per completion", ["objective/kl"])]
    if len({row.get("objective/kl_coef") for row in metrics if "objective/kl_coef" in row}) > 1:
        kl_axes.append(Axis("β (adaptive)", ["objective/kl_coef"]))
    panels = [
        Panel(
            "score",
            "Judge score and RLHF reward (score − β·KL)",
            [Axis("score", ["objective/scores", "objective/rlhf_reward"])],
        ),
        Panel("kl", "KL from the reference model (summed k1)", kl_axes),
        Panel("entropy", "Policy entropy", [Axis("nats per token", ["objective/entropy"])]),
        Panel(
            "policy",
            "Size of the policy updates",
            [Axis("share of tokens clipped", ["policy/clipfrac"]), Axis("approx. KL per token", ["policy/approxkl"])],
        ),
        Panel(
            "generation",
            "Generations",
            [Axis("mean length (tokens)", ["gen/length"]), Axis("share ending with EOS", ["gen/eos_rate"])],
        ),
        Panel(
            "value",
            "Critic",
            [Axis("value loss", ["loss/value"]), Axis("explained variance", ["val/explained_variance"])],
        ),
    ]
    if len(reward_keys) > 1:
        panels.append(Panel("rewards", "Reward components (raw, before their weights)", [Axis("value", reward_keys)]))
    judge_shares = sorted(k for k in present if k.startswith("eval/judge/") and k.endswith("_positive_share"))
    panels.append(
        Panel(
            "held_out",
            "Held-out prompts during training (eval.every)",
            [
                Axis("positive share", ["eval/positive_share", *judge_shares]),
                Axis("reference perplexity", ["eval/ref_perplexity"]),
            ],
        )
    )
    return panels


PANEL_NAMES = ("score", "kl", "entropy", "policy", "generation", "value", "rewards", "held_out")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


CURVES_NOTE = (
    "One point per optimisation step (metric keys as in docs/metrics.md). In runs of 30 steps or more the faint line "
    "is the per-step value and the bold line its centred moving average."
)


def draw_panel(panel: Panel, metrics: list[dict], path: Path) -> int:
    """Draw one panel to ``path``; returns its number of subplots, 0 (nothing written) when no key was logged."""
    axes = [(axis, [(key, *series(metrics, key)) for key in axis.keys]) for axis in panel.axes]
    axes = [(axis, [line for line in lines if line[1]]) for axis, lines in axes]
    axes = [(axis, lines) for axis, lines in axes if lines]
    if not axes:
        return 0
    width = 5.6 * len(axes)
    # margins in inches, whatever the number of subplots
    fig = new_figure(width, 3.3, left=0.85 / width, right=1 - 0.25 / width, bottom=0.17, top=0.84, wspace=0.32)
    fig.suptitle(panel.title, fontsize=12, fontweight="bold")
    for (axis, lines), ax in zip(axes, fig.subplots(1, len(axes), squeeze=False)[0]):
        for i, (key, steps, values) in enumerate(lines):
            color = COLORS[i % len(COLORS)]
            if len(values) >= 30:  # noisy: faint raw curve + a moving average
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
                ax.plot(steps, smooth(values, max(2, len(values) // 30)), color=color, linewidth=2, label=key)
            else:
                ax.plot(steps, values, color=color, linewidth=1.8, marker="o", markersize=3, label=key)
        style_axes(ax, "step", axis.ylabel)
        low, high = ax.get_ylim()
        if low < 0 < high:
            ax.axhline(0, color="#555555", linewidth=0.8)
        ax.legend(fontsize=8, frameon=False, loc="best")
    fig.savefig(path, format="png")
    return len(axes)


def write_plots(run_dir: Path, metrics: list[dict]) -> list[Plot]:
    """PNG per panel in ``run_dir/plots``; stale PNGs of panels not drawn this time are removed."""
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels_for(metrics) if metrics else []:
        path = out / f"{panel.name}.png"
        columns = try_plot("report", panel.name, draw_panel, panel, metrics, path)
        if columns:
            written.append(Plot(panel.title, path, columns))
    for name in PANEL_NAMES:
        stale = out / f"{name}.png"
        if stale.exists() and all(plot.path != stale for plot in written):
            stale.unlink()
    return written


# ----------------------------------------------------------------------------------------------------------------
# text


def describe_run(cfg: dict, metrics: list[dict], run_dir: Path) -> str:
    """The opening paragraph: model, algorithm, reward, KL, budget and how far the run got."""
    m, a, r, t, lora = (section(cfg, k) for k in ("model", "algorithm", "rollout", "train", "lora"))
    beta = a.get("kl_coef", "?")
    kl = f"adaptive β (start {beta}, target KL {a['kl_target']})" if a.get("kl_target") is not None else f"β = {beta}"
    batch, k = r.get("batch_size", "?"), r.get("samples_per_prompt", 1)
    prompts = batch // k if isinstance(batch, int) and isinstance(k, int) and k else "?"
    steps = t.get("steps", "?")
    adapter = f"a LoRA adapter (r={lora.get('r', '?')}, α={lora.get('alpha', '?')})"
    on_model = describe_model(str(m.get("name", "?")))
    schedule = f"lr {t.get('lr', '?')}, {t.get('lr_schedule', '?')} schedule); seed {cfg.get('seed', '?')}."
    if a.get("name") == "dpo":  # offline: pairs, no sampling, no reward
        p = section(cfg, "preference")
        parts = [
            f"{describe_algorithm(cfg)} fine-tuned {adapter} on {on_model}, offline, on the pairs of "
            f"{p.get('file') or p.get('dataset')}; the reference is the starting model (adapter off).",
            f"Each of the {steps} steps used {p.get('batch_size', '?')} pairs ({schedule}",
        ]
    else:
        parts = [
            f"{describe_algorithm(cfg)} fine-tuned {adapter} on {on_model} to maximise the judge score, reward = "
            f"{describe_rewards(cfg)}, with a KL penalty to the starting model ({kl}).",
            f"Each of the {steps} steps sampled {batch} completions ({prompts} prompts × {k}) of at most"
            f" {r.get('max_new_tokens', '?')} new tokens at temperature {r.get('temperature', '?')}, then ran"
            f" {a.get('ppo_epochs', '?')} epochs × {a.get('num_minibatches', '?')} minibatches of updates ({schedule}",
        ]
    if metrics:
        last = metrics[-1].get("step", len(metrics))
        if isinstance(steps, int) and last < steps:
            parts.append(f"The run stopped after step {last} of {steps}.")
        scores = [v for v in series(metrics, "objective/scores")[1] if math.isfinite(v)]
        if scores:
            tail = scores[-max(1, len(scores) // 8) :]
            parts.append(
                f"The mean judge score went from {scores[0]:+.3f} at the first step to {sum(tail) / len(tail):+.3f}"
                f" over the last {len(tail)} step{'s' if len(tail) > 1 else ''}."
            )
        seconds = sum(v for v in series(metrics, "time/step")[1] if math.isfinite(v))
        if seconds:
            parts.append(f"Training took {format_duration(seconds)} (sum of step times).")
    else:
        parts.append("No metrics were logged (metrics.jsonl is missing or empty).")
    if not (run_dir / "final").is_dir():
        parts.append("There is no final/ adapter yet.")
    return " ".join(parts)


def training_samples(rows: list[dict], per_step: int = 4) -> list[dict]:
    """From samples.jsonl: the first ``per_step`` rows of the first and of the last sampled step (reward hacking
    shows here first: compare the texts, not just the scores)."""
    steps = sorted({row["step"] for row in rows})
    chosen = steps[:1] + steps[-1:] if len(steps) > 1 else steps
    return [row for step in chosen for row in [r for r in rows if r["step"] == step][:per_step]]


def render_markdown(run_dir, cfg, metrics, summary, samples, plots, during=(), per_prompt=()) -> str:
    out = [f"# RLHF run report: {run_dir.name}", "", "## What was trained", "", describe_run(cfg, metrics, run_dir), ""]
    out += ["## Before and after training", ""]
    if summary:
        out += md_evaluation(cfg, summary, summary["after"].get("num_samples", len(samples) // 2), per_prompt)
    else:
        out += [f"No evaluation yet (no eval/summary.json): run `rlhflab eval --run {run_dir}`.", ""]
    out += ["## Training curves", ""] + ([CURVES_NOTE, ""] if plots else [])
    out += [f"![{plot.title}](plots/{plot.path.name})\n" for plot in plots] or ["(no metrics to plot)", ""]
    if samples:
        out += ["## Completions before and after", ""] + md_table(SAMPLE_HEADER, md_sample_rows(samples)) + [""]
    if during:
        out += ["## Samples during training", ""]
        rows = [
            [str(r["step"]), md_cell(r["prompt"]), format_score(r["score"]), md_cell(r["completion"])] for r in during
        ]
        out += md_table(["step", "prompt", "score", "completion"], rows) + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------------
# html

CSS = (
    PAGE_CSS
    + "p.summary { font-size: 1.02em; background: #f6f8fa; padding: .8em 1em; border-radius: 6px; }\n"
    + TABLE_CSS
    + """\
table.numbers td:not(:first-child), table.numbers th:not(:first-child) {
  text-align: right; font-variant-numeric: tabular-nums; }
table.samples { width: 100%; font-size: .93em; }
table.samples td.prompt { width: 22%; font-weight: 600; }
table.samples td.model { width: 4.5em; color: #555; }
table.samples td.score { width: 4.5em; text-align: right; font-variant-numeric: tabular-nums; }
table.samples tr.after td { border-bottom: 2px solid #aab4be; }
td.pos { color: #116329; background: #e6f4ea; }
td.neg { color: #a40e26; background: #fdecee; }
div.plots { display: grid; grid-template-columns: 1fr 1fr; gap: .8em; }
figure { margin: 0; } figure.double { grid-column: 1 / -1; }
"""
    + FIGURE_CSS
    + CODE_CSS
)


def score_cell(score: float | None) -> str:
    css = score_class(score)
    return f'<td class="score{" " + css if css else ""}">{format_score(score)}</td>'


def render_html(run_dir, cfg, metrics, summary, samples, plots, during=(), per_prompt=()) -> str:
    e = html.escape
    out = page_start(f"{run_dir.name}: rlhflab report", CSS) + [
        f"<h1>RLHF run report: {e(run_dir.name)}</h1>",
        "<h2>What was trained</h2>",
        f'<p class="summary">{inline_code(describe_run(cfg, metrics, run_dir))}</p>',
        "<h2>Before and after training</h2>",
    ]
    if summary:
        n = summary["after"].get("num_samples", len(samples) // 2)
        out.append(f"<p>{e(eval_intro(cfg, n))}</p>")
        out.append(table_start("numbers", SUMMARY_HEADER))
        out += [table_row(row) for row in summary_table(summary, positive_threshold(cfg))]
        out.append("</table>")
        if per_prompt:
            out.append(f"<p>{e(PER_PROMPT_NOTE)}</p>")
            out += [table_start("numbers", PER_PROMPT_HEADER), *(table_row(row) for row in per_prompt), "</table>"]
    else:
        out.append(
            f"<p>No evaluation yet (no eval/summary.json): run <code>rlhflab eval --run {e(str(run_dir))}</code>.</p>"
        )
    out.append("<h2>Training curves</h2>")
    if plots:
        out.append(f"<p>{e(CURVES_NOTE)}</p>")
    out.append('<div class="plots">')
    for plot in plots:
        width = "single" if plot.columns == 1 else "double"
        out.append(f'<figure class="{width}"><img src="{data_uri(plot.path)}" alt="{e(plot.title)}"></figure>')
    out.append("</div>")
    if not plots:
        out.append("<p>(no metrics to plot)</p>")
    if samples:
        out.append("<h2>Completions before and after</h2>")
        out.append(table_start("samples", SAMPLE_HEADER))
        for i in range(0, len(samples) - 1, 2):
            (prompt, _, b_score, b_text), (a_prompt, _, a_score, a_text) = samples[i], samples[i + 1]
            span = 'rowspan="2" ' if prompt == a_prompt else ""
            out.append(
                f'<tr class="before"><td {span}class="prompt">{e(prompt)}</td><td class="model">before</td>'
                f"{score_cell(b_score)}<td>{text_or_empty(b_text)}</td></tr>"
            )
            first = "" if span else f'<td class="prompt">{e(a_prompt)}</td>'
            out.append(
                f'<tr class="after">{first}<td class="model">after</td>{score_cell(a_score)}'
                f"<td>{text_or_empty(a_text)}</td></tr>"
            )
        out.append("</table>")
    if during:
        out.append("<h2>Samples during training</h2>")
        out.append(table_start("samples", ["step", "prompt", "score", "completion"]))
        out += [
            f'<tr><td class="model">{row["step"]}</td><td class="prompt">{e(row["prompt"])}</td>'
            f"{score_cell(row['score'])}<td>{text_or_empty(row['completion'])}</td></tr>"
            for row in during
        ]
        out.append("</table>")
    out.append(PAGE_END)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------------------


def write_report(run_dir: Path) -> Path:
    """Write ``report.md``, ``report.html`` (plots embedded, no external resources) and ``plots/*.png``.

    Returns the path of ``report.md``; ``report.html`` lies next to it. Raises :class:`UserError` only when
    ``run_dir`` is not a run directory; missing metrics or evaluation only shorten the report.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() and not (run_dir / "metrics.jsonl").is_file():
        raise UserError(f"--run: {run_dir} is not a run directory (no config.yaml or metrics.jsonl)")
    cfg = read_config(run_dir)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    summary = read_summary(run_dir)
    before, after = read_jsonl(run_dir / "eval" / "before.jsonl"), read_jsonl(run_dir / "eval" / "after.jsonl")
    samples = sample_rows(before, after)
    threshold = positive_threshold(cfg)
    during = training_samples(read_jsonl(run_dir / "samples.jsonl"))
    plots = write_plots(run_dir, metrics)
    args = (run_dir, cfg, metrics, summary, samples, plots, during)
    html_rows = per_prompt_table(before, after, threshold, cell=str)
    (run_dir / "report.html").write_text(render_html(*args, html_rows))
    path = run_dir / "report.md"
    path.write_text(render_markdown(*args, per_prompt_table(before, after, threshold)))
    return path


def write_outputs(run_dir: Path) -> list[Path]:
    """End-of-run hook: the report and, when final/ exists, the model card. Never raises; returns what was written.

    A failure (a plotting library problem, a full disk, ...) prints one warning line: the trained adapter and the
    metrics are already saved, and ``write_report`` can be run again later.
    """
    run_dir = Path(run_dir)
    steps = [("report", write_report)] + ([("model card", write_model_card)] if (run_dir / "final").is_dir() else [])
    written = []
    for what, write in steps:
        try:
            path = write(run_dir)
        except Exception as err:  # never fail a finished training run over its report
            print(f"warning: could not write the {what} of {run_dir} ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        written.append(path)
        shown = path.with_suffix(".html") if what == "report" else path
        print(f"{what}: {shown}")
    return written
