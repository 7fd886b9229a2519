"""The run report: ``report.md``, a self-contained ``report.html`` and PNG plots in ``plots/``.

``write_report(run_dir)`` reads only files (``config.yaml``, ``metrics.jsonl``, ``eval/``), never a model, so it
runs in about a second and can be called at the end of training, after ``rlhflab eval``, or on any old run. The
report reads top to bottom: what was trained, the before/after numbers, the training curves, then every held-out
prompt with the starting model's and the trained policy's continuation.

A missing metric key drops its curve (RLOO and GRPO have no critic, so no value panel); a missing ``eval/`` drops
the tables; a panel that fails to draw is skipped with a warning on stderr, never an exception.
"""

from __future__ import annotations

import base64
import html
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhflab.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# reading the run directory


def read_config(run_dir: Path) -> dict:
    """The resolved config as a plain dict ({} when config.yaml is missing or unreadable)."""
    path = run_dir / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as err:
        print(f"report: cannot read {path}: {err}", file=sys.stderr)
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: Path) -> list[dict]:
    """One dict per line; blank and malformed lines (a crash mid-write) are skipped."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_summary(run_dir: Path) -> dict | None:
    """``eval/summary.json`` as {"before": {...}, "after": {...}}, or None when absent or malformed."""
    path = run_dir / "eval" / "summary.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("before"), dict)
        or not isinstance(data.get("after"), dict)
    ):
        return None
    return data


def section(cfg: dict, name: str) -> dict:
    value = cfg.get(name)
    return value if isinstance(value, dict) else {}


def series(metrics: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric; rows without it are left out, None (a non-finite value) becomes NaN."""
    steps, values = [], []
    for i, row in enumerate(metrics):
        if key not in row:
            continue
        value = row[key]
        if value is not None and not isinstance(value, (int, float)):
            continue
        steps.append(float(row.get("step", i + 1)))
        values.append(math.nan if value is None else float(value))
    return steps, values


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
    return panels


PANEL_NAMES = ("score", "kl", "entropy", "policy", "generation", "value", "rewards")
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


CURVES_NOTE = (
    "One point per optimisation step (metric keys as in docs/metrics.md). In runs of 30 steps or more the faint line "
    "is the per-step value and the bold line its centred moving average."
)


def smooth(values: list[float], half_window: int) -> list[float]:
    """Centred moving average over finite values (window 2·h+1, shorter at the ends)."""
    out = []
    for i in range(len(values)):
        window = [v for v in values[max(0, i - half_window) : i + half_window + 1] if math.isfinite(v)]
        out.append(sum(window) / len(window) if window else math.nan)
    return out


@dataclass
class Plot:
    """A PNG that was written: its title, path and number of side-by-side subplots."""

    title: str
    path: Path
    columns: int


def draw_panel(panel: Panel, metrics: list[dict], path: Path) -> int:
    """Draw one panel to ``path``; returns its number of subplots, 0 (nothing written) when no key was logged."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state, no GUI backend
    from matplotlib.figure import Figure

    axes = [(axis, [(key, *series(metrics, key)) for key in axis.keys]) for axis in panel.axes]
    axes = [(axis, [line for line in lines if line[1]]) for axis, lines in axes]
    axes = [(axis, lines) for axis, lines in axes if lines]
    if not axes:
        return 0
    width = 5.6 * len(axes)
    fig = Figure(figsize=(width, 3.3), dpi=100)
    # fixed margins (in inches) rather than constrained layout, which draws every figure twice
    fig.subplots_adjust(left=0.85 / width, right=1 - 0.25 / width, bottom=0.17, top=0.84, wspace=0.32)
    FigureCanvasAgg(fig)
    fig.suptitle(panel.title, fontsize=12, fontweight="bold")
    for (axis, lines), ax in zip(axes, fig.subplots(1, len(axes), squeeze=False)[0]):
        color_index = 0
        for key, steps, values in lines:
            color = COLORS[color_index % len(COLORS)]
            color_index += 1
            if len(values) >= 30:  # noisy: faint raw curve + a moving average
                ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
                ax.plot(steps, smooth(values, max(2, len(values) // 30)), color=color, linewidth=2, label=key)
            else:
                ax.plot(steps, values, color=color, linewidth=1.8, marker="o", markersize=3, label=key)
        ax.set_xlabel("step")
        ax.set_ylabel(axis.ylabel)
        ax.grid(True, alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
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
        try:
            columns = draw_panel(panel, metrics, path)
            if columns:
                written.append(Plot(panel.title, path, columns))
        except Exception as err:  # a plot must never fail a run: warn and leave the panel out
            print(f"report: skipped the {panel.name} plot ({type(err).__name__}: {err})", file=sys.stderr)
    for name in PANEL_NAMES:
        stale = out / f"{name}.png"
        if stale.exists() and all(plot.path != stale for plot in written):
            stale.unlink()
    return written


# ----------------------------------------------------------------------------------------------------------------
# text: the summary paragraph and the tables

REWARD_KINDS = {
    "lexicon": "the VADER sentiment lexicon",
    "classifier": "a classifier",
    "callable": "a Python function",
    "repetition": "unique words / words",
    "short": "−1 for completions under min_words words",
}


def describe_reward(component: dict) -> str:
    kind = component.get("kind", "?")
    what = REWARD_KINDS.get(kind, str(kind))
    if kind == "classifier" and component.get("model"):
        what = f"classifier {component['model']} ({component.get('label', '')} {component.get('output', '')})"
    elif kind == "callable" and component.get("function"):
        what = f"function {component['function']}"
    elif kind == "short":
        what = f"−1 for completions under {component.get('min_words', '?')} words"
    weight = component.get("weight", 1.0)
    return f"{weight:g} × {component.get('name', kind)} ({what})"


def describe_algorithm(cfg: dict) -> str:
    a, critic, r = section(cfg, "algorithm"), section(cfg, "critic"), section(cfg, "rollout")
    name = str(a.get("name", "ppo"))
    k = r.get("samples_per_prompt", 1)
    if name == "ppo":
        gae = f"GAE γ={a.get('gamma', '?')}, λ={a.get('gae_lambda', '?')}"
        return (
            f"PPO with a learned critic (LoRA + value head, {critic.get('granularity', 'token')}-level values, {gae})"
        )
    if name == "rloo":
        return (
            f"RLOO ({a.get('rloo_baseline', 'leave_one_out').replace('_', '-')} baseline over k={k} samples per prompt)"
        )
    if name == "grpo":
        return f"GRPO (advantages normalised within groups of k={k} samples per prompt)"
    return name.upper()


def describe_model(name: str) -> str:
    if name == "demo":
        return "the offline demo model (a tiny GPT-NeoX review writer built by `rlhflab sft`)"
    return f"`{name}`"


def describe_run(cfg: dict, metrics: list[dict], run_dir: Path) -> str:
    """The opening paragraph: model, algorithm, reward, KL, budget and how far the run got."""
    m, a, r, t, lora = (section(cfg, k) for k in ("model", "algorithm", "rollout", "train", "lora"))
    components = section(cfg, "reward").get("components") or []
    reward = " + ".join(describe_reward(c) for c in components if isinstance(c, dict)) or "(not recorded)"
    beta = a.get("kl_coef", "?")
    kl = f"adaptive β (start {beta}, target KL {a['kl_target']})" if a.get("kl_target") is not None else f"β = {beta}"
    batch, k = r.get("batch_size", "?"), r.get("samples_per_prompt", 1)
    prompts = batch // k if isinstance(batch, int) and isinstance(k, int) and k else "?"
    steps = t.get("steps", "?")
    parts = [
        f"{describe_algorithm(cfg)} fine-tuned a LoRA adapter (r={lora.get('r', '?')}, α={lora.get('alpha', '?')})"
        f" on {describe_model(str(m.get('name', '?')))} to maximise the judge score, reward = {reward},"
        f" with a KL penalty to the starting model ({kl}).",
        f"Each of the {steps} steps sampled {batch} completions ({prompts} prompts × {k}) of at most"
        f" {r.get('max_new_tokens', '?')} new tokens at temperature {r.get('temperature', '?')}, then ran"
        f" {a.get('ppo_epochs', '?')} epochs × {a.get('num_minibatches', '?')} minibatches of updates"
        f" (lr {t.get('lr', '?')}, {t.get('lr_schedule', '?')} schedule); seed {cfg.get('seed', '?')}.",
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


def format_duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def held_out(cfg: dict) -> bool:
    """Whether the evaluation prompts were held out; without any configured, train.py uses the first training ones."""
    data, ev = section(cfg, "data"), section(cfg, "eval")
    held = bool(data.get("eval_prompts_file")) or bool(data.get("eval_dataset_split")) or bool(ev.get("prompts"))
    return data.get("source", "demo") == "demo" or held


def eval_intro(cfg: dict, n) -> str:
    """The sentence above the before/after table: how many completions, of which prompts."""
    prompts = (
        "held-out prompts"
        if held_out(cfg)
        else "the first training prompts (no held-out prompts were configured: set data.eval_prompts_file)"
    )
    return (
        f"{n} completions per side of {prompts}, scored by the training judge:"
        " the starting model (before) vs the trained policy (after)."
    )


def summary_rows(threshold, side: dict) -> list[tuple[str, str, str]]:
    """(label, summary key, format) of the before/after summary table (terminal, report, model card); ``side`` is
    one side's summary, for the second judges it names."""
    second_judges = [key for key in side if key.startswith("judge/") and key.endswith("_positive_share")]
    verdicts = [key.removeprefix("positive_share/") for key in side if key.startswith("positive_share/")]
    positive = f"positive share ({verdicts[0]}'s verdict)" if verdicts else f"positive share (score > {threshold})"
    return [
        ("mean score", "score_mean", "{:+.3f}"),
        (positive, "positive_share", "{:.0%}"),
        *((f"positive share ({name}'s verdict)", f"positive_share/{name}", "{:.0%}") for name in verdicts[1:]),
        *((f"second judge {key[6:-15]}: positive share", key, "{:.0%}") for key in second_judges),
        ("distinct-2 (diversity)", "distinct_2", "{:.3f}"),
        ("mean length (tokens)", "mean_length", "{:.1f}"),
        ("ended with EOS", "eos_rate", "{:.0%}"),
        ("perplexity under the starting model", "ref_perplexity", "{:.2f}"),
    ]


def summary_table(summary: dict, threshold) -> list[list[str]]:
    """Rows [label, before, after, change] for the metrics present in both sides."""
    rows = []
    for label, key, fmt in summary_rows(threshold, summary["before"]):
        b, a = summary["before"].get(key), summary["after"].get(key)
        if not isinstance(b, (int, float)) or not isinstance(a, (int, float)):
            continue
        if "%" in fmt:  # shares change by percentage points
            change = f"{(a - b) * 100:+.0f} pp"
        else:
            change = (fmt if "{:+" in fmt else fmt.replace("{:", "{:+")).format(a - b)
        rows.append([label, fmt.format(b), fmt.format(a), change])
    return rows


def sample_rows(before: list[dict], after: list[dict]) -> list[tuple[str, str, float | None, str]]:
    """(prompt, 'before' | 'after', score, continuation) pairs in eval order; rows are matched by position."""
    rows = []
    for b, a in zip(before, after):
        for label, row in (("before", b), ("after", a)):
            score = row.get("score")
            rows.append(
                (
                    str(row.get("prompt", "")),
                    label,
                    score if isinstance(score, (int, float)) else None,
                    str(row.get("completion", "")),
                )
            )
    return rows


def per_prompt_rows(
    before: list[dict], after: list[dict], threshold: float
) -> list[tuple[str, int, float, float, float, float]]:
    """(prompt, samples, positive share before, after, mean score before, after) per distinct prompt, in eval
    order. A row's verdict is its ``positive`` (the first judge's, as in the summary), else score > threshold."""

    def positive(row: dict) -> bool:
        return bool(row["positive"]) if "positive" in row else row.get("score", 0.0) > threshold

    groups: dict[str, list[tuple[dict, dict]]] = {}
    for b, a in zip(before, after):
        groups.setdefault(str(b.get("prompt", "")), []).append((b, a))
    out = []
    for prompt, pairs in groups.items():
        n = len(pairs)
        shares = [sum(positive(pair[i]) for pair in pairs) / n for i in (0, 1)]
        means = [sum(pair[i].get("score", 0.0) for pair in pairs) / n for i in (0, 1)]
        out.append((prompt, n, shares[0], shares[1], means[0], means[1]))
    return out


def per_prompt_table(before: list[dict], after: list[dict], threshold: float) -> list[list[str]]:
    """Markdown rows of :func:`per_prompt_rows`."""
    return [
        [md_cell(prompt), str(n), f"{sb:.0%}", f"{sa:.0%}", f"{mb:+.2f}", f"{ma:+.2f}"]
        for prompt, n, sb, sa, mb, ma in per_prompt_rows(before, after, threshold)
    ]


PER_PROMPT_HEADER = ["prompt", "samples", "positive before", "positive after", "mean score before", "after"]
PER_PROMPT_NOTE = "Each held-out prompt over its samples (the positive verdict as in the table above):"

# ----------------------------------------------------------------------------------------------------------------
# markdown


def training_samples(rows: list[dict], per_step: int = 4) -> list[dict]:
    """From samples.jsonl: the first ``per_step`` rows of the first and of the last sampled step (reward hacking
    shows here first: compare the texts, not just the scores)."""
    steps = sorted({row["step"] for row in rows})
    chosen = steps[:1] + steps[-1:] if len(steps) > 1 else steps
    return [row for step in chosen for row in [r for r in rows if r["step"] == step][:per_step]]


def md_cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, no table pipes, no HTML or emphasis markup."""
    text = " ".join(text.split()) or "(empty)"
    text = html.escape(text, quote=False)
    for ch in "\\`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def format_score(score: float | None) -> str:
    return "" if score is None or not math.isfinite(score) else f"{score:+.2f}"


def render_markdown(run_dir, cfg, metrics, summary, samples, plots, during=(), per_prompt=()) -> str:
    threshold = section(cfg, "eval").get("positive_threshold", 0.05)
    out = [f"# RLHF run report: {run_dir.name}", "", "## What was trained", "", describe_run(cfg, metrics, run_dir), ""]
    out += ["## Before and after training", ""]
    if summary:
        n = summary["after"].get("num_samples", len(samples) // 2)
        out += [eval_intro(cfg, n), ""]
        out += md_table(["metric", "before", "after", "change"], summary_table(summary, threshold)) + [""]
        if per_prompt:
            out += [PER_PROMPT_NOTE, ""] + md_table(PER_PROMPT_HEADER, per_prompt) + [""]
    else:
        out += [f"No evaluation yet (no eval/summary.json): run `rlhflab eval --run {run_dir}`.", ""]
    out += ["## Training curves", ""] + ([CURVES_NOTE, ""] if plots else [])
    out += [f"![{plot.title}](plots/{plot.path.name})\n" for plot in plots] or ["(no metrics to plot)", ""]
    if samples:
        out += ["## Completions before and after", ""]
        rows, previous = [], None
        for prompt, label, score, text in samples:
            rows.append([md_cell(prompt) if prompt != previous else "", label, format_score(score), md_cell(text)])
            previous = prompt
        out += md_table(["prompt", "model", "score", "continuation"], rows) + [""]
    if during:
        out += ["## Samples during training", ""]
        rows = [
            [str(r["step"]), md_cell(r["prompt"]), format_score(r["score"]), md_cell(r["completion"])] for r in during
        ]
        out += md_table(["step", "prompt", "score", "completion"], rows) + [""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------------------------------------------
# html

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1200px;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
p.summary { font-size: 1.02em; background: #f6f8fa; padding: .8em 1em; border-radius: 6px; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .35em .7em; vertical-align: top; text-align: left; }
th { background: #f0f3f6; }
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
figure img { width: 100%; height: auto; border: 1px solid #eee; box-sizing: border-box; }
code { background: #f0f3f6; padding: 0 .25em; border-radius: 3px; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def inline_code(text: str) -> str:
    """HTML-escape, then turn `code` spans into <code> elements."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(run_dir, cfg, metrics, summary, samples, plots, during=(), per_prompt=()) -> str:
    e = html.escape
    threshold = section(cfg, "eval").get("positive_threshold", 0.05)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(run_dir.name)}: rlhflab report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>RLHF run report: {e(run_dir.name)}</h1>",
        "<h2>What was trained</h2>",
        f'<p class="summary">{inline_code(describe_run(cfg, metrics, run_dir))}</p>',
        "<h2>Before and after training</h2>",
    ]
    if summary:
        n = summary["after"].get("num_samples", len(samples) // 2)
        out.append(f"<p>{e(eval_intro(cfg, n))}</p>")
        out.append('<table class="numbers"><tr><th>metric</th><th>before</th><th>after</th><th>change</th></tr>')
        out += [
            "<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in summary_table(summary, threshold)
        ]
        out.append("</table>")
        if per_prompt:
            out.append(f"<p>{e(PER_PROMPT_NOTE)}</p>")
            out.append('<table class="numbers"><tr>' + "".join(f"<th>{e(h)}</th>" for h in PER_PROMPT_HEADER) + "</tr>")
            out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in per_prompt]
            out.append("</table>")
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
        out.append('<table class="samples"><tr><th>prompt</th><th>model</th><th>score</th><th>continuation</th></tr>')
        for i in range(0, len(samples) - 1, 2):
            (prompt, _, b_score, b_text), (a_prompt, _, a_score, a_text) = samples[i], samples[i + 1]
            span = 'rowspan="2" ' if prompt == a_prompt else ""
            out.append(
                f'<tr class="before"><td {span}class="prompt">{e(prompt)}</td><td class="model">before</td>'
                f"{score_cell(b_score)}<td>{e(b_text) or '<em>(empty)</em>'}</td></tr>"
            )
            first = "" if span else f'<td class="prompt">{e(a_prompt)}</td>'
            out.append(
                f'<tr class="after">{first}<td class="model">after</td>{score_cell(a_score)}'
                f"<td>{e(a_text) or '<em>(empty)</em>'}</td></tr>"
            )
        out.append("</table>")
    if during:
        out.append("<h2>Samples during training</h2>")
        out.append('<table class="samples"><tr><th>step</th><th>prompt</th><th>score</th><th>completion</th></tr>')
        out += [
            f'<tr><td class="model">{row["step"]}</td><td class="prompt">{e(row["prompt"])}</td>'
            f"{score_cell(row['score'])}<td>{e(row['completion']) or '<em>(empty)</em>'}</td></tr>"
            for row in during
        ]
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def score_cell(score: float | None) -> str:
    css = "" if score is None or not math.isfinite(score) else " pos" if score > 0 else " neg" if score < 0 else ""
    return f'<td class="score{css}">{format_score(score)}</td>'


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
    per_prompt = per_prompt_table(before, after, section(cfg, "eval").get("positive_threshold", 0.05))
    during = training_samples(read_jsonl(run_dir / "samples.jsonl"))
    plots = write_plots(run_dir, metrics)
    args = (run_dir, cfg, metrics, summary, samples, plots, during, per_prompt)
    (run_dir / "report.html").write_text(render_html(*args))
    path = run_dir / "report.md"
    path.write_text(render_markdown(*args))
    return path


def write_outputs(run_dir: Path) -> list[Path]:
    """End-of-run hook: the report and, when final/ exists, the model card. Never raises; returns what was written.

    A failure (a plotting library problem, a full disk, ...) prints one warning line: the trained adapter and the
    metrics are already saved, and ``write_report`` can be run again later.
    """
    from rlhflab.modelcard import write_model_card

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
