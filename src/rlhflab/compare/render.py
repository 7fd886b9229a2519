"""The comparison report: ``compare.md``, a self-contained ``compare.html`` and the plots, from files only."""

from __future__ import annotations

import html
import math
import shlex
from pathlib import Path

from rlhflab.compare.planning import LABELS, LEARNED_REWARD, OFFLINE
from rlhflab.compare.plots import COLORS, write_plots
from rlhflab.compare.record import STATE_FILE, algo_rows, before_row, eval_judges, load_results, read_state
from rlhflab.compare.summary import (
    RUN_HEADER,
    describe_setup,
    disturbed_timings,
    final_table,
    headline,
    reward_model_text,
    run_rows,
    sample_columns,
    table_header,
)
from rlhflab.errors import UserError
from rlhflab.reporting.page import (
    CODE_CSS,
    FIGURE_CSS,
    PAGE_CSS,
    PAGE_END,
    TABLE_CSS,
    data_uri,
    page_start,
    score_class,
    table_start,
    text_or_empty,
)
from rlhflab.reporting.text import format_duration, format_score, md_cell, md_table


def title_of(state: dict) -> str:
    offline = [LABELS[a] for a in state["algos"] if a in OFFLINE]
    budget = "an equal sample budget" + (f" ({', '.join(offline)} offline)" if offline else "")
    return f"{' vs '.join(LABELS[a] for a in state['algos'])} at {budget} ({state['family']})"


def notes(state: dict) -> list[str]:
    """The paragraphs under the table: what each column is, and PPO-RM's reward model."""
    out = [table_note(state)]
    if state.get("reward_model"):
        cost = state.get("costs", {}).get(state["reward_model"].get("dir", "rm"), {})
        took = f", trained once in {format_duration(cost['wall_s'])} (its process)" if cost.get("wall_s") else ""
        out.append(f"PPO-RM's judge: {reward_model_text(state)}{took}.")
    return out


def render_markdown(state, results, rows, before, plots, samples, judges) -> str:
    out = [f"# {title_of(state)}", "", describe_setup(state, results), "", "## Result", ""]
    out += [" ".join(headline(rows, before, disturbed_timings(results))), ""]
    out += md_table(table_header(state, judges), final_table(state, rows, before, judges)) + [""]
    for note in notes(state):
        out += [note, ""]
    out += ["## Plots", ""]
    for plot in plots:
        out += [f"![{plot.title}](plots/{plot.path.name})", "", f"*{plot.caption}*", ""]
    header, columns = samples
    if header:
        out += ["## Completions before and after", "", SAMPLES_NOTE, ""]
        table = []
        for i, first in enumerate(columns[0]):
            cells = [md_cell(str(first.get("prompt", "")))]
            for column in columns:
                row = column[i] if i < len(column) else {}
                cells.append(f"{md_cell(str(row.get('completion', '')))} ({format_score(row.get('score'))})")
            table.append(cells)
        out += md_table(["prompt", *header], table) + [""]
    out += ["## Runs", ""] + md_table(RUN_HEADER, run_rows(results, state.get("steps", 0))) + [""]
    out += ["Each run directory holds its own report.html, metrics.jsonl and eval/.", ""]
    out += ["Reproduce: `" + reproduce_command(state) + "`", ""]
    return "\n".join(out).rstrip() + "\n"


def table_note(state: dict) -> str:
    """What each column of the final table is (the parts about PPO-RM and DPO only when they are compared)."""
    algos = state.get("algos", [])
    rm, dpo = any(a in LEARNED_REWARD for a in algos), any(a in OFFLINE for a in algos)
    kinds = (
        ["the judge and the sampled completions of an online run"]
        + (["PPO-RM's learned reward model"] if rm else [])
        + (["DPO's preference pairs (offline: no sampled completions, its preset's steps)"] if dpo else [])
    )
    kinds = ", ".join(kinds[:-1]) + " or " + kinds[-1] if len(kinds) > 1 else kinds[0]
    return (
        f"Trained on: {kinds}. Score and the first positive share are the comparison judge's on each run's held-out "
        f"evaluation after training (eval/heldout.json: the same judge for every run{', PPO-RM included' if rm else ''}"
        "); the other positive shares are the held-out judges' (eval.judges, which train no run); distinct-2 and "
        "perplexity under the starting model come from eval/summary.json. KL held-out is the mean summed-k1 KL from "
        "the starting model of the trained policy's own held-out completions, measured alike for every algorithm; KL "
        "at end of training is the same estimate on the training batches over the last eighth of the steps"
        f"{' (DPO samples none)' if dpo else ''}. time/step is the mean training step (generation, judging, forward "
        f"passes, updates{'; for DPO a step of pairs' if dpo else ''}); peak RSS is the largest resident memory of the "
        "run's process. The starting model row is the evaluation before training."
    )


SAMPLES_NOTE = (
    "The first held-out prompts, first seed: the starting model's completion (the same for every algorithm: same "
    "seed, same prompts) and each trained policy's, with the judge's score in brackets."
)


def reproduce_command(state: dict) -> str:
    parts = [
        f"rlhflab compare --preset {state.get('family')} --algos {','.join(state.get('algos', []))}",
        *([f"--budget {state.get('budget')}"] if state.get("budget") else []),
        f"--seeds {len(state.get('seeds', []))}",
    ]
    parts += [f"--set {shlex.quote(o)}" for o in state.get("overrides", [])]
    return " ".join(parts)


CSS = (
    PAGE_CSS
    + """\
p.summary { background: #f6f8fa; padding: .8em 1em; border-radius: 6px; }
p.headline { font-size: 1.08em; background: #eef6ee; border-left: 4px solid #2ca02c; padding: .7em 1em; }
p.note { color: #555; font-size: .9em; }
"""
    + TABLE_CSS
    + """\
table.numbers td:not(:first-child), table.numbers th:not(:first-child) {
  text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.numbers tr.start td { color: #555; font-style: italic; }
table.samples { width: 100%; font-size: .9em; }
table.samples td.prompt { font-weight: 600; width: 14%; }
span.pos { color: #116329; } span.neg { color: #a40e26; }
span.dot { display: inline-block; width: .8em; height: .8em; border-radius: 50%; margin-right: .4em; }
div.plots { display: grid; grid-template-columns: 1fr 1fr; gap: .8em 1.2em; }
figure { margin: 0; }
"""
    + FIGURE_CSS
    + "figcaption { font-size: .85em; color: #555; }\n"
    + CODE_CSS
)


def score_span(score) -> str:
    text = format_score(score)
    return f' <span class="{score_class(score)}">({text})</span>' if text else ""


def render_html(state, results, rows, before, plots, samples, judges) -> str:
    e = html.escape
    title = title_of(state)
    out = page_start(f"{title}: rlhflab compare", CSS) + [
        f"<h1>{e(title)}</h1>",
        f'<p class="summary">{e(describe_setup(state, results))}</p>',
        "<h2>Result</h2>",
        f'<p class="headline">{e(" ".join(headline(rows, before, disturbed_timings(results))))}</p>',
        table_start("numbers", table_header(state, judges)),
    ]
    best = max((r.score[0] for r in rows if math.isfinite(r.score[0])), default=None)
    for i, cells in enumerate(final_table(state, rows, before, judges)):
        is_start = before is not None and i == 0
        row = None if is_start else rows[i - (1 if before else 0)]
        dot = "" if row is None else f'<span class="dot" style="background:{COLORS[row.algo]}"></span>'
        tds = [f"<td>{dot}{e(cells[0])}</td>"]
        for j, cell in enumerate(cells[1:], 1):
            strong = j == 2 and row is not None and best is not None and row.score[0] == best and len(rows) > 1
            tds.append(f"<td>{'<b>' + e(cell) + '</b>' if strong else e(cell)}</td>")
        out.append(f'<tr class="{"start" if is_start else "algo"}">' + "".join(tds) + "</tr>")
    out += ["</table>", *[f'<p class="note">{e(note)}</p>' for note in notes(state)]]
    out += ["<h2>Plots</h2>", '<div class="plots">']
    for plot in plots:
        out.append(
            f'<figure><img src="{data_uri(plot.path)}" alt="{e(plot.title)}">'
            f"<figcaption>{e(plot.caption)}</figcaption></figure>"
        )
    out.append("</div>")
    header, columns = samples
    if header:
        out += ["<h2>Completions before and after</h2>", f'<p class="note">{e(SAMPLES_NOTE)}</p>']
        out.append(table_start("samples", ["prompt", *header]))
        for i, first in enumerate(columns[0]):
            cells = [f'<td class="prompt">{e(str(first.get("prompt", "")))}</td>']
            for column in columns:
                row = column[i] if i < len(column) else {}
                cells.append(f"<td>{text_or_empty(str(row.get('completion', '')))}{score_span(row.get('score'))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    out += ["<h2>Runs</h2>", table_start("numbers", RUN_HEADER)]
    for r, cells in zip(results, run_rows(results, state.get("steps", 0))):
        link = (
            f'<a href="{e(r.name)}/report.html">{e(cells[0])}</a>'
            if (r.run_dir / "report.html").is_file()
            else e(cells[0])
        )
        out.append(f"<tr><td>{link}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells[1:]) + "</tr>")
    out += ["</table>", f"<p>Reproduce: <code>{e(reproduce_command(state))}</code></p>", PAGE_END]
    return "\n".join(out) + "\n"


def write_compare_report(output_dir: Path, samples: int = 4) -> Path:
    """Write ``compare.md``, ``compare.html`` (plots embedded) and ``plots/*.png`` from ``compare.json`` and the
    run directories (files only, no model). Runs not finished yet only shorten the report. Returns compare.md."""
    output_dir = Path(output_dir)
    state = read_state(output_dir)
    if not state.get("runs"):
        raise UserError(f"{output_dir} holds no comparison ({STATE_FILE} missing): run `rlhflab compare` first")
    results = load_results(output_dir, state)
    rows = algo_rows(results, state["algos"])
    before = before_row(results)
    judges = eval_judges(results)
    plots = write_plots(output_dir, results, rows, before, state["batch_size"])
    sample_table = sample_columns(results, state["algos"], samples)
    page = render_html(state, results, rows, before, plots, sample_table, judges)
    (output_dir / "compare.html").write_text(page)
    path = output_dir / "compare.md"
    path.write_text(render_markdown(state, results, rows, before, plots, sample_table, judges))
    return path
