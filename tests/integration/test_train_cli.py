"""Through the CLI on a tiny random-weight model: 2 PPO steps, the run directory contract, user errors."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import train_argv
from peft import PeftModel
from safetensors.torch import load_file

from rlhflab.cli import main
from rlhflab.models.loading import load_causal_lm

REQUIRED_METRICS = [
    "step",
    "objective/scores",
    "objective/kl",
    "objective/rlhf_reward",
    "objective/entropy",
    "policy/approxkl",
    "policy/clipfrac",
    "policy/ratio",
    "loss/policy",
    "loss/value",
    "val/clipfrac",
    "val/explained_variance",
    "gen/length",
    "gen/eos_rate",
    "lr",
    "time/step",
    "time/generate",
    "time/update",
    "perf/tokens_per_second",
    "reward/length",
]


def run_args(model_dir, prompts_file, out, *extra):
    judge = "eval.judges=[{name: chars, kind: callable, function: 'reward_fns:length_reward'}]"
    return train_argv(
        model_dir, prompts_file, out, "--set", "train.lr=1e-2", "--set", "eval.max_prompts=4", "--set", judge, *extra
    )


def base_weights(roles) -> dict[str, torch.Tensor]:
    """Copies of every base weight of every model the roles hold (the policy's, a separate critic's and reference's)."""
    weights = {}
    for i, model in enumerate(roles.models()):
        weights |= {f"{i}:{n}": p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    return weights


@pytest.mark.parametrize("extra", [(), ("--set", "model.roles=separate", "--set", "critic.granularity=sequence")])
def test_two_ppo_steps_through_the_cli(tiny_model_dir, prompts_file, tmp_path, extra, monkeypatch):
    import rlhflab.train as train_module

    out = tmp_path / "run"
    loaded = {}

    def load_setup_and_keep(*args, **kwargs):  # the trained models stay in memory: their base weights are read after
        setup = loaded["setup"] = real_load_setup(*args, **kwargs)
        loaded["base_before"] = base_weights(setup.roles)
        return setup

    real_load_setup = train_module.load_setup
    monkeypatch.setattr(train_module, "load_setup", load_setup_and_keep)
    assert main(run_args(tiny_model_dir, prompts_file, out, *extra)) == 0

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in REQUIRED_METRICS:
        assert all(key in m and m[key] is not None and math.isfinite(m[key]) for m in lines), key
    assert abs(lines[0]["objective/kl"]) < 1e-6  # the policy starts equal to the reference
    documented = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    for key in lines[0]:
        name = "reward/<name>" if key.startswith("reward/") else key
        assert f"`{name}`" in documented, f"metric {key} is not documented in docs/metrics.md"

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["train"]["steps"] == 2 and resolved["model"]["name"] == str(tiny_model_dir)

    # final/: PEFT adapter loadable the standard way, critic adapter and value head in safetensors
    policy = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(out / "final"))
    lora = {k: v for k, v in policy.state_dict().items() if "lora_B" in k}
    assert lora and any(v.abs().sum() > 0 for v in lora.values()), "LoRA weights changed from their zero init"
    assert set(load_file(str(out / "final" / "value_head.safetensors"))) == {"weight", "bias"}
    assert (out / "final" / "critic" / "adapter_model.safetensors").is_file()
    # base weights unchanged: the trained models' base weights in memory are those they started with (after two
    # updates at lr 1e-2), and the saved adapter holds no base weight
    after, before = base_weights(loaded["setup"].roles), loaded["base_before"]
    assert after.keys() == before.keys() and len(before) > 10
    moved = [name for name, weight in before.items() if not torch.equal(after[name], weight)]
    assert not moved, f"base weights moved in training: {moved[:3]}"
    saved = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert all("lora_" in k for k in saved)

    summary = json.loads((out / "eval" / "summary.json").read_text())
    for side in ("before", "after"):
        for key in (
            "score_mean",
            "positive_share",
            "distinct_2",
            "mean_length",
            "ref_perplexity",
            "judge/chars_mean",
            "judge/chars_positive_share",
        ):
            assert math.isfinite(summary[side][key])
    rows = [json.loads(line) for line in (out / "eval" / "after.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and set(rows[0]) == {"prompt", "completion", "score", "judge/chars", "kl"}
    assert all(math.isfinite(row["kl"]) for row in rows)

    # sample tables at the first and the last step (tracking.samples_every = 10 > 2 steps), shown in the report
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    batch = resolved["rollout"]["batch_size"]
    assert [row["step"] for row in samples] == [1] * min(8, batch) + [2] * min(8, batch)
    assert all(set(row) == {"step", "prompt", "completion", "score"} for row in samples)
    assert "## Samples during training" in (out / "report.md").read_text()


def test_base_weights_unchanged_in_memory(tiny_model_dir, prompts_file):
    """Train 2 steps in-process and compare every base weight before/after (the LoRA ones must move)."""
    from dataclasses import replace

    from rlhflab.algorithms.ppo import ppo_advantages
    from rlhflab.config import build_config
    from rlhflab.rollout import sample_rollout, score_rollout
    from rlhflab.session import load_setup
    from rlhflab.update import update

    cfg = build_config(
        overrides=[
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            "data.source=file",
            f"data.prompts_file={prompts_file}",
            "rollout.batch_size=8",
            "train.micro_batch_size=4",
            "rollout.max_new_tokens=6",
            "train.lr=1e-2",
            "train.warmup_ratio=0",
        ]
    )
    setup = load_setup(cfg)
    model = setup.roles.policy
    base_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    params = setup.roles.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    g = torch.Generator().manual_seed(0)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, setup.train_prompts, cfg, g, setup.device)
    rollout, _ = score_rollout(setup, replace(rollout, scores=torch.randn(len(rollout), generator=g)), cfg)
    rollout, _ = ppo_advantages(rollout, cfg, 0.05)
    update(setup, rollout, cfg, optimizer, scheduler, params, g, {"total": 0, "in_a_row": 0}, kl_coef=0.05)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in base_before.items())
    changed = [n for n, p in lora_before.items() if not torch.equal(after[n], p)]
    assert any("lora_A" in n and ".critic." in n for n in changed) and any(".default." in n for n in changed)


def test_user_errors_are_one_line(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_model_dir, prompts_file, out, "--set", "train.micro_batch_size=3")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.micro_batch_size (3)" in err and "Traceback" not in err
    assert main(["train", "--preset", "nope"]) == 2
    assert "available presets" in capsys.readouterr().err
    assert main(run_args(tiny_model_dir, prompts_file, out, "--set", "model.name=/no/such/dir")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    assert main(["bench", "--steps", "0"]) == 2 and "--steps" in capsys.readouterr().err


def test_refuses_to_overwrite_a_run(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 1\n")
    assert main(run_args(tiny_model_dir, prompts_file, out)) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == "seed: 1\n"


@pytest.mark.parametrize("algo", ["rloo", "grpo"])
def test_rloo_and_grpo_run_without_a_critic(tiny_model_dir, prompts_file, tmp_path, algo):
    from rlhflab.config import build_config
    from rlhflab.session import load_setup

    out = tmp_path / algo
    extra = ("--set", f"algorithm.name={algo}", "--set", "rollout.samples_per_prompt=4")
    assert main(run_args(tiny_model_dir, prompts_file, out, *extra)) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert all(math.isfinite(m["loss/policy"]) for m in lines) and "loss/value" not in lines[0]
    assert not (out / "final" / "critic").exists() and not (out / "final" / "value_head.safetensors").exists()
    policy = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(out / "final"))
    assert any(v.abs().sum() > 0 for k, v in policy.state_dict().items() if "lora_B" in k)

    cfg = build_config(
        overrides=[
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            "data.source=file",
            f"data.prompts_file={prompts_file}",
            f"algorithm.name={algo}",
            "rollout.samples_per_prompt=4",
            "rollout.batch_size=8",
            "train.micro_batch_size=4",
        ]
    )
    roles = load_setup(cfg).roles
    assert roles.critic is None and roles.value_head is None
    assert not any(".critic." in n for n, _ in roles.policy.named_parameters())


def test_group_algorithms_need_several_samples_per_prompt():
    from rlhflab.config import build_config
    from rlhflab.errors import UserError

    with pytest.raises(UserError, match="rollout.samples_per_prompt: grpo compares samples of one prompt"):
        build_config(preset="demo-grpo", overrides=["rollout.samples_per_prompt=1"])


def test_grpo_first_epoch_old_logprobs_equal_a_scoring_pass(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """GRPO takes its old logprobs from the update's first epoch instead of a scoring pass: the run (every metric,
    the final adapter) equals one with the scoring pass bit for bit, and it makes fewer policy forward passes."""
    from dataclasses import replace

    import rlhflab.models.forward
    from rlhflab.algorithms.registry import ALGORITHMS

    calls = []  # rows of the scoring and update passes (a plain LM head: log-probs come from the hidden states)
    response_hidden = rlhflab.models.forward.response_hidden
    monkeypatch.setattr(
        rlhflab.models.forward, "response_hidden", lambda *a: calls.append(len(a[1])) or response_hidden(*a)
    )
    grpo = ALGORITHMS["grpo"]

    def run(name, **patch):
        monkeypatch.setitem(
            ALGORITHMS, "grpo", replace(grpo, measures_old_logprobs=lambda cfg: patch.get("defer", True))
        )
        calls.clear()
        sets = ["algorithm.name=grpo", "rollout.samples_per_prompt=4", "algorithm.ppo_epochs=2", "train.lr=5e-3"]
        argv = train_argv(tiny_model_dir, prompts_file, tmp_path / name, *[x for s in sets for x in ("--set", s)])
        assert main(argv + ["--set", "eval.enabled=false"]) == 0
        rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        timeless = [{k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))} for row in rows]
        return timeless, load_file(str(tmp_path / name / "final" / "adapter_model.safetensors")), sum(calls)

    deferred, deferred_weights, deferred_calls = run("deferred", defer=True)
    scored, scored_weights, scored_calls = run("scored", defer=False)
    # the entropy's token sum runs per micro-batch instead of per scoring pass: equal up to summation order
    entropies = [(d.pop("objective/entropy"), s.pop("objective/entropy")) for d, s in zip(deferred, scored)]
    assert all(d > 0 and d == pytest.approx(s, rel=1e-6) for d, s in entropies)
    assert deferred == scored
    assert deferred_weights.keys() == scored_weights.keys()
    assert all(torch.equal(deferred_weights[k], scored_weights[k]) for k in scored_weights)
    # per step, 8 rows: the policy's scoring pass over them is gone (the reference's rows pass in micro-batches
    # instead of one scoring pass, as many rows); generation and the rest are the same
    assert scored_calls - deferred_calls == 2 * 8


def test_grpo_with_the_audit_options_through_the_cli(tiny_model_dir, prompts_file, tmp_path):
    """Adaptive β, early stop on target_kl, masked truncated completions, missing-EOS penalty, warm-up: 2 steps run,
    the first update's lr is train.lr / (warm-up + 1), and every logged key is documented."""
    out = tmp_path / "grpo"
    sets = [
        "algorithm.name=grpo",
        "rollout.samples_per_prompt=4",
        "algorithm.kl_target=0.01",
        "algorithm.target_kl=1e-9",
        "rollout.mask_truncated_completions=true",
        "reward.missing_eos_penalty=1.0",
        "train.warmup_ratio=0.5",  # 2 steps × 4 epochs = 8 updates: 4 warm up
        "train.lr=1e-3",
    ]
    assert main(run_args(tiny_model_dir, prompts_file, out, *[a for s in sets for a in ("--set", s)])) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert lines[0]["lr"] == pytest.approx(1e-3 / 5)
    assert all(1 <= m["policy/epochs"] <= 4 and math.isfinite(m["loss/policy"]) for m in lines)
    assert lines[1]["objective/kl_coef"] != lines[0]["objective/kl_coef"]  # the adaptive β moved
    documented = (Path(__file__).parents[2] / "docs" / "metrics.md").read_text()
    assert all(f"`{k}`" in documented for k in lines[0] if not k.startswith("reward/"))


def test_positive_share_is_the_judges_verdict_through_the_cli(tiny_model_dir, prompts_file, tmp_path):
    """Reward = VADER + 0.5 · repetition (as the imdb presets' classifier + repetition): positive_share counts
    VADER compound > 0.05 on each side's completions, not score > eval.positive_threshold."""
    from rlhflab.rewards.lexicon import VaderReward

    out = tmp_path / "run"
    reward = "reward.components=[{name: vader, kind: lexicon}, {name: repetition, kind: repetition, weight: 0.5}]"
    assert main(run_args(tiny_model_dir, prompts_file, out, "--set", reward, "--steps", "1")) == 0
    summary = json.loads((out / "eval" / "summary.json").read_text())
    for side in ("before", "after"):
        rows = [json.loads(line) for line in (out / "eval" / f"{side}.jsonl").read_text().splitlines()]
        verdict = sum(v > 0.05 for v in VaderReward()([row["completion"] for row in rows])) / len(rows)
        assert summary[side]["positive_share"] == verdict == summary[side]["positive_share/vader"]
    assert "positive share (vader's verdict)" in (out / "report.md").read_text()
