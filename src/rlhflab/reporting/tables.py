"""The before/after evaluation tables, shared by the terminal (evaluate.py), the run report and the model card."""

from __future__ import annotations

from rlhflab.reporting.describe import eval_intro, positive_threshold
from rlhflab.reporting.text import format_score, md_cell, md_table

SUMMARY_HEADER = ["metric", "before", "after", "change"]
SAMPLE_HEADER = ["prompt", "model", "score", "continuation"]
PER_PROMPT_HEADER = ["prompt", "samples", "positive before", "positive after", "mean score before", "after"]
PER_PROMPT_NOTE = "Each held-out prompt over its samples (the positive verdict as in the table above):"


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
        ("KL from the starting model (nats)", "kl", "{:.2f}"),
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


def md_sample_rows(samples: list[tuple[str, str, float | None, str]]) -> list[list[str]]:
    """Markdown rows of :func:`sample_rows`; a prompt is written once for its before/after pair."""
    rows, previous = [], None
    for prompt, label, score, text in samples:
        rows.append([md_cell(prompt) if prompt != previous else "", label, format_score(score), md_cell(text)])
        previous = prompt
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


def per_prompt_table(before: list[dict], after: list[dict], threshold: float, cell=md_cell) -> list[list[str]]:
    """Rows of :func:`per_prompt_rows` as text; ``cell`` makes the prompt safe (Markdown by default, ``str`` for
    HTML, which escapes its cells itself)."""
    return [
        [cell(prompt), str(n), f"{sb:.0%}", f"{sa:.0%}", f"{mb:+.2f}", f"{ma:+.2f}"]
        for prompt, n, sb, sa, mb, ma in per_prompt_rows(before, after, threshold)
    ]


def md_evaluation(cfg: dict, summary: dict, n, per_prompt: list[list[str]]) -> list[str]:
    """Markdown lines: the sentence on what was evaluated, the summary table and the per-prompt table."""
    out = [eval_intro(cfg, n), ""]
    out += md_table(SUMMARY_HEADER, summary_table(summary, positive_threshold(cfg))) + [""]
    if per_prompt:
        out += [PER_PROMPT_NOTE, ""] + md_table(PER_PROMPT_HEADER, per_prompt) + [""]
    return out
