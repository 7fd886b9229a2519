"""The run report: plots, report.md and a self-contained report.html, from files only (no model, no network)."""

import json
import math
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rlhflab.config import build_config, save_config
from rlhflab.errors import UserError
from rlhflab.report import write_report
from rlhflab.reporting import run_report as report  # the module whose globals write_report uses

PPO_PLOTS = {"score", "kl", "entropy", "policy", "generation", "value"}
VALUE_KEYS = ("loss/value", "val/explained_variance", "val/clipfrac", "val/mean")
PROMPTS = ["The movie was", "I <b>hated</b> this & that | film", 'She said "no"']


def metrics_row(step: int, with_value: bool = True) -> dict:
    row = {
        "step": step,
        "objective/scores": 0.1 * step,
        "objective/kl": 0.05 * step,
        "objective/rlhf_reward": 0.1 * step - 0.0025 * step,
        "objective/entropy": 1.0 - 0.01 * step,
        "objective/kl_coef": 0.05,
        "loss/policy": 0.001,
        "policy/approxkl": 0.001 * step,
        "policy/clipfrac": 0.01 * step,
        "policy/ratio": 1.0,
        "gen/length": 20.0 + step,
        "gen/eos_rate": 0.8,
        "lr": 1e-3,
        "time/step": 1.5,
        "reward/vader": 0.1 * step,
    }
    if with_value:
        row.update({"loss/value": 0.05 / step, "val/explained_variance": 0.1 * step, "val/clipfrac": 0.0})
    return row


def make_run_dir(root: Path, preset: str = "demo-ppo", steps: int = 12, with_eval: bool = True) -> Path:
    """A finished run directory as train.py writes it, with synthetic numbers."""
    run_dir = root / "run"
    (run_dir / "final").mkdir(parents=True)
    cfg = build_config(preset=preset, overrides=[f"output_dir={run_dir}"])
    save_config(cfg, run_dir / "config.yaml")
    rows = [metrics_row(s, with_value=cfg.algorithm.name == "ppo") for s in range(1, steps + 1)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if with_eval:
        (run_dir / "eval").mkdir()
        for name, sign in (("before", -1), ("after", 1)):
            lines = [
                {"prompt": p, "completion": f" {name} text {i} <i>x</i>", "score": sign * 0.5}
                for i, p in enumerate(PROMPTS)
            ]
            (run_dir / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        side = {
            "score_mean": 0.1,
            "positive_share": 0.5,
            "distinct_1": 0.5,
            "distinct_2": 0.8,
            "mean_length": 21.0,
            "eos_rate": 0.9,
            "ref_perplexity": 3.2,
            "num_samples": 3,
            "judge/bayes_mean": -0.2,
            "judge/bayes_positive_share": 0.25,
        }
        after = {**side, "score_mean": 0.7, "positive_share": 1.0, "judge/bayes_positive_share": 0.75}
        summary = {"before": side, "after": after}
        (run_dir / "eval" / "summary.json").write_text(json.dumps(summary))
    return run_dir


class Collector(HTMLParser):
    """Every tag with its attributes, and the text outside tags."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Collector:
    parser = Collector()
    parser.feed(path.read_text())
    parser.close()
    return parser


def test_report_has_every_plot_summary_and_samples(tmp_path):
    run_dir = make_run_dir(tmp_path)
    md_path = write_report(run_dir)

    assert md_path == run_dir / "report.md"
    pngs = {p.stem for p in (run_dir / "plots").glob("*.png")}
    assert pngs == PPO_PLOTS
    for png in (run_dir / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = parse(run_dir / "report.html")
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(PPO_PLOTS)
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in images)
    # self-contained: no external scripts, stylesheets or links
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe")]
    text = "".join(page.text)
    for prompt in PROMPTS:
        assert prompt in text  # the parser unescapes: the prompt round-trips exactly
    assert "what was trained" in text.lower() and "PPO" in text
    for label in ("mean score", "positive share", "distinct-2", "mean length", "ended with EOS", "perplexity"):
        assert label in text
    rows = [attrs for tag, attrs in page.tags if tag == "tr"]
    assert sum(attrs.get("class") == "before" for attrs in rows) == len(PROMPTS)
    assert sum(attrs.get("class") == "after" for attrs in rows) == len(PROMPTS)

    md = md_path.read_text()
    for name in PPO_PLOTS:
        assert f"(plots/{name}.png)" in md
    assert "| prompt | model | score | continuation |" in md
    assert "| The movie was | before | -0.50 |" in md
    assert "| second judge bayes: positive share | 25% | 75% | +50 pp |" in md  # as the terminal shows it
    assert "second judge bayes: positive share" in text


def test_report_escapes_html_and_markdown(tmp_path):
    run_dir = make_run_dir(tmp_path)
    write_report(run_dir)
    html_text = (run_dir / "report.html").read_text()
    assert "<b>hated</b>" not in html_text and "<i>x</i>" not in html_text
    assert "I &lt;b&gt;hated&lt;/b&gt; this &amp; that | film" in html_text
    md = (run_dir / "report.md").read_text()
    assert "<b>" not in md
    assert "this &amp; that \\| film" in md  # a pipe would split the Markdown table cell


def test_report_without_eval_or_value_keys(tmp_path):
    run_dir = make_run_dir(tmp_path, preset="demo-grpo", with_eval=False)
    assert not any("loss/value" in line for line in (run_dir / "metrics.jsonl").read_text().splitlines())
    write_report(run_dir)
    pngs = {p.stem for p in (run_dir / "plots").glob("*.png")}
    assert pngs == PPO_PLOTS - {"value"}
    page = parse(run_dir / "report.html")
    assert len([1 for tag, _ in page.tags if tag == "img"]) == len(pngs)
    text = "".join(page.text)
    assert "GRPO" in text and "No evaluation yet" in text
    assert "Completions before and after" not in text


def test_stale_plots_are_removed(tmp_path):
    run_dir = make_run_dir(tmp_path)
    write_report(run_dir)
    assert (run_dir / "plots" / "value.png").exists()
    rows = [metrics_row(s, with_value=False) for s in range(1, 5)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_report(run_dir)
    assert not (run_dir / "plots" / "value.png").exists()


def test_report_tolerates_partial_and_odd_metrics(tmp_path):
    run_dir = make_run_dir(tmp_path, with_eval=False)
    rows = [{"step": 1, "objective/scores": None}, {"step": 2, "objective/scores": 0.3, "objective/kl": 0.1}]
    text = "".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "objective/sco'  # crash mid-write
    (run_dir / "metrics.jsonl").write_text(text)
    write_report(run_dir)
    assert {p.stem for p in (run_dir / "plots").glob("*.png")} == {"score", "kl"}
    assert "stopped after step 2 of" in (run_dir / "report.md").read_text()


def test_report_without_metrics(tmp_path):
    run_dir = make_run_dir(tmp_path)
    (run_dir / "metrics.jsonl").unlink()
    write_report(run_dir)
    assert "No metrics were logged" in (run_dir / "report.md").read_text()
    assert not list((run_dir / "plots").glob("*.png"))


def test_a_failing_plot_is_skipped_not_raised(tmp_path, monkeypatch, capsys):
    run_dir = make_run_dir(tmp_path)
    real = report.draw_panel

    def flaky(panel, metrics, path):
        if panel.name == "kl":
            raise ValueError("boom")
        return real(panel, metrics, path)

    monkeypatch.setattr(report, "draw_panel", flaky)
    write_report(run_dir)
    assert {p.stem for p in (run_dir / "plots").glob("*.png")} == PPO_PLOTS - {"kl"}
    assert "skipped the kl plot (ValueError: boom)" in capsys.readouterr().err


def test_not_a_run_directory(tmp_path):
    with pytest.raises(UserError, match="not a run directory"):
        write_report(tmp_path)


def test_report_is_fast(tmp_path):
    run_dir = make_run_dir(tmp_path, steps=200)
    write_report(run_dir)  # the first call pays for importing matplotlib
    started = time.perf_counter()
    write_report(run_dir)
    assert time.perf_counter() - started < 3.0


def test_smooth_ignores_nan():
    out = report.smooth([1.0, math.nan, 3.0], half_window=1)
    assert out == [1.0, 2.0, 3.0]


def test_write_outputs_writes_report_and_card_and_never_raises(tmp_path, monkeypatch, capsys):
    run_dir = make_run_dir(tmp_path)
    written = report.write_outputs(run_dir)
    assert written == [run_dir / "report.md", run_dir / "final" / "README.md"]
    assert "report.html" in capsys.readouterr().out

    def broken(run_dir):
        raise OSError("disk full")

    monkeypatch.setattr(report, "write_report", broken)
    assert report.write_outputs(run_dir) == [run_dir / "final" / "README.md"]
    assert "could not write the report" in capsys.readouterr().err


def test_report_says_when_eval_prompts_were_training_prompts(tmp_path):
    run_dir = make_run_dir(tmp_path)
    text = (run_dir / "config.yaml").read_text().replace("source: demo", "source: file")
    (run_dir / "config.yaml").write_text(text)
    write_report(run_dir)
    assert "the first training prompts (no held-out prompts were configured" in (run_dir / "report.md").read_text()


def test_report_shows_samples_of_the_first_and_last_sampled_step(tmp_path):
    run_dir = make_run_dir(tmp_path)
    rows = [
        {"step": step, "prompt": f"prompt {step}.{i}", "completion": f"text <b>{step}.{i}</b>", "score": step / 100}
        for step in (1, 10, 20)
        for i in range(6)
    ]
    (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.training_samples(rows) == rows[:4] + rows[12:16]

    md = write_report(run_dir).read_text()
    assert "## Samples during training" in md
    assert "| 1 | prompt 1.0 | +0.01 | text &lt;b&gt;1.0&lt;/b&gt; |" in md
    assert "| 20 | prompt 20.3 | +0.20 |" in md
    assert "prompt 10.0" not in md and "prompt 20.4" not in md
    text = "".join(parse(run_dir / "report.html").text)
    assert "Samples during training" in text and "text <b>20.3</b>" in text and "prompt 10.0" not in text


def test_per_prompt_rows_by_hand():
    """Two prompts, samples matched by position; a row's own verdict ("positive") wins over score > threshold."""
    from rlhflab.report import per_prompt_rows

    before = [
        {"prompt": "This is the worst", "score": -0.5},
        {"prompt": "This is the worst", "score": 0.2},
        {"prompt": "The cast is", "score": 0.3, "positive": False},  # a judge said no, whatever the score
    ]
    after = [
        {"prompt": "This is the worst", "score": 0.6},
        {"prompt": "This is the worst", "score": 0.04},  # under the threshold
        {"prompt": "The cast is", "score": 0.01, "positive": True},
    ]
    rows = per_prompt_rows(before, after, threshold=0.05)
    assert [r[:2] for r in rows] == [("This is the worst", 2), ("The cast is", 1)]
    worst, cast = rows
    assert worst[2:4] == (0.5, 0.5) and worst[4] == pytest.approx(-0.15) and worst[5] == pytest.approx(0.32)
    assert cast[2:] == (0.0, 1.0, 0.3, 0.01)


def test_report_and_card_show_each_prompt_before_and_after(tmp_path):
    from rlhflab.modelcard import render_model_card

    run_dir = make_run_dir(tmp_path)
    report = write_report(run_dir).read_text()
    assert "| prompt | samples | positive before | positive after |" in report
    assert f"| {PROMPTS[0]} | 1 | 0% | 100% | -0.50 | +0.50 |" in report
    assert "positive after" in (run_dir / "report.html").read_text()
    card = render_model_card(run_dir)
    assert f"| {PROMPTS[0]} | 1 | 0% | 100% | -0.50 | +0.50 |" in card


def test_per_prompt_table_in_html_is_escaped_once(tmp_path):
    run_dir = make_run_dir(tmp_path)
    for name in ("before", "after"):
        row = {"prompt": "<b>bold | opening</b>", "completion": " text", "score": 0.5}
        (run_dir / "eval" / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    write_report(run_dir)
    page = (run_dir / "report.html").read_text()
    assert "<td>&lt;b&gt;bold | opening&lt;/b&gt;</td>" in page and "&amp;lt;" not in page


def test_reward_description_names_a_cap():
    from rlhflab.reporting.describe import describe_reward

    vader = {"name": "vader", "kind": "lexicon", "weight": 1.0}
    assert describe_reward(vader) == "1 × vader (the VADER sentiment lexicon)"
    assert describe_reward({**vader, "cap": 0.5}) == "1 × min(vader, 0.5) (the VADER sentiment lexicon)"
