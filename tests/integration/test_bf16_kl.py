"""KL to the starting model is exactly 0 at step 1 in bf16 too. On a CPU with AMX (measured on a Xeon) a bf16 matrix
product's rounding depends on how many rows a pass holds: at SmolLM2's width 576, one pass of 16 rows and two of 8
disagree in the last bit. GRPO takes the policy's old log-probs from the update's first epoch (micro-batches), so the
reference must be scored in micro-batches too; scored 16 rows at a time, `smollm2-grpo`'s step-1 KL read -5e-6
instead of 0 there. RLOO and PPO score both sides in the same passes. Where bf16 products do not depend on the rows
(AVX2: emulated), this test passes either way."""

from __future__ import annotations

import json

import pytest
from conftest import train_argv
from families import build_family_dir

from rlhflab.cli import main


@pytest.mark.parametrize("algorithm", ["grpo", "rloo", "ppo"])
def test_step_one_kl_is_exactly_zero_in_bf16(algorithm, prompts_file, tmp_path):
    width = dict(hidden_size=576, intermediate_size=1152, num_attention_heads=9, num_key_value_heads=3)
    model_dir = build_family_dir(tmp_path / "llama576", "llama", **width)
    out = tmp_path / "run"
    argv = train_argv(model_dir, prompts_file, out, steps=1, batch=16, micro=4, new_tokens=8)
    argv += ["--set", "model.dtype=bf16", "--set", f"algorithm.name={algorithm}", "--set", "eval.max_prompts=1"]
    argv += ["--set", "train.scoring_batch_size=16", "--set", "eval.samples_per_prompt=1"]
    if algorithm != "ppo":
        argv += ["--set", "rollout.samples_per_prompt=4"]
    assert main(argv) == 0
    step1 = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert step1["objective/kl"] == 0.0
