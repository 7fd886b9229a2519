"""eval.every (held-out evaluation during training) and eval.stop_share (stop at a target)."""

import json

import pytest
from conftest import train_argv

from rlhflab.cli import main
from rlhflab.config import build_config
from rlhflab.errors import UserError

UNTIMED = ("time/", "perf/", "eval/")


def run(tiny_model_dir, prompts_file, out, *sets, steps=4):
    extra = ["train.lr=5e-3", "eval.max_prompts=4", *sets]
    argv = train_argv(tiny_model_dir, prompts_file, out, *[a for v in extra for a in ("--set", v)], steps=steps)
    assert main(argv) == 0
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_periodic_eval_logs_the_final_evals_numbers_and_leaves_training_unchanged(
    tiny_model_dir, prompts_file, tmp_path, capsys
):
    plain = run(tiny_model_dir, prompts_file, tmp_path / "plain")
    probed = run(tiny_model_dir, prompts_file, tmp_path / "probed", "eval.every=2")
    # the probe samples with its own generator: the training trajectory is the same to the last digit
    strip = [{k: v for k, v in row.items() if not k.startswith(UNTIMED)} for row in probed]
    assert strip == [{k: v for k, v in row.items() if not k.startswith(UNTIMED)} for row in plain]
    assert [("eval/positive_share" in row) for row in probed] == [False, True, False, True]
    assert all("time/eval" in row and row["time/eval"] > 0 for row in probed[1::2])
    # time/elapsed: the loop's wall-clock without the evaluations; it holds every step's time/step
    for i, row in enumerate(probed):
        assert row["time/elapsed"] >= sum(r["time/step"] for r in probed[: i + 1])
    # the final evaluation took its "after" side from the probe after the last step, not sampling it again ...
    assert "eval.every took after the last step" in capsys.readouterr().out
    summary_path = tmp_path / "probed" / "eval" / "summary.json"
    assert json.loads(summary_path.read_text())["after"]["kl"] == probed[-1]["eval/kl"]
    # ... which is what an evaluation from scratch measures: the very policy, prompts, seed and judges
    assert main(["eval", "--run", str(tmp_path / "probed")]) == 0
    after = json.loads(summary_path.read_text())["after"]
    for key in ("positive_share", "score_mean", "distinct_2", "mean_length"):
        assert probed[-1][f"eval/{key}"] == pytest.approx(after[key], abs=1e-12), key
    for key in ("ref_perplexity", "kl"):
        assert probed[-1][f"eval/{key}"] == pytest.approx(after[key], rel=1e-5, abs=1e-6), key
    assert (tmp_path / "probed" / "plots" / "held_out.png").is_file()
    assert not (tmp_path / "plain" / "plots" / "held_out.png").exists()


def test_stop_share_stops_at_the_first_evaluation_that_reaches_it(tiny_model_dir, prompts_file, tmp_path, capsys):
    # every completion counts as positive (score > -1e9): the share is 100 % at the first evaluation, step 2
    sets = ("eval.every=2", "eval.stop_share=0.5", "eval.positive_threshold=-1e9")
    rows = run(tiny_model_dir, prompts_file, tmp_path / "stop", *sets, steps=6)
    assert [row["step"] for row in rows] == [1, 2]
    assert rows[-1]["eval/positive_share"] == 1.0
    assert "held-out positive share 100.0% >= eval.stop_share 50.0% at step 2: stopping" in capsys.readouterr().out
    assert (tmp_path / "stop" / "final" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "stop" / "eval" / "summary.json").is_file()
    # a target that is never reached runs every step
    sets = ("eval.every=2", "eval.stop_share=1.0", "eval.positive_threshold=1e9")
    assert len(run(tiny_model_dir, prompts_file, tmp_path / "never", *sets, steps=4)) == 4


@pytest.mark.parametrize(
    "sets, message",
    [
        (["eval.every=-1"], "eval.every: must be 0 (off) or a positive integer, got -1"),
        (["eval.stop_share=0.9"], "eval.stop_share: needs eval.every > 0"),
        (["eval.every=2", "eval.stop_share=1.5"], "eval.stop_share: must be in (0, 1] (or null = off), got 1.5"),
    ],
)
def test_bad_eval_every_settings_are_named(sets, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_config(preset="demo-grpo", overrides=sets)
