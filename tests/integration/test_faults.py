"""Non-finite updates are skipped and logged; too many in a row stop the run cleanly, checkpoints intact."""

import json
import math
from dataclasses import replace

import torch
from conftest import train_argv

from rlhflab.algorithms.registry import ALGORITHMS
from rlhflab.cli import main


def args_for(model_dir, prompts_file, out, *extra):
    sets = ["train.lr=5e-3", "algorithm.ppo_epochs=2", "checkpoint.every=1", "eval.enabled=false"]
    return train_argv(
        model_dir,
        prompts_file,
        out,
        *[a for v in sets for a in ("--set", v)],
        *extra,
        steps=3,
        batch=4,
        micro=2,
        new_tokens=4,
    )


def poison(monkeypatch, bad_calls):
    """Make the chosen micro-steps' loss non-finite (NaN loss and NaN gradients), as a real blow-up would."""
    original = ALGORITHMS["ppo"].micro_step
    calls = {"n": 0}

    def micro_step(roles, micro, cfg, *args):
        stats = original(roles, micro, cfg, *args)
        calls["n"] += 1
        if bad_calls(calls["n"]):
            for p in roles.trainable_parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))
            stats = replace(stats, policy_loss=torch.tensor(float("nan")))
        return stats

    monkeypatch.setitem(ALGORITHMS, "ppo", replace(ALGORITHMS["ppo"], micro_step=micro_step))


def test_a_non_finite_update_is_skipped_and_logged(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    poison(monkeypatch, lambda n: n == 5)  # step 2's first update (2 micro-steps × 2 updates per step)
    out = tmp_path / "run"
    assert main(args_for(tiny_model_dir, prompts_file, out)) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1]
    from safetensors.torch import load_file

    weights = load_file(str(out / "final" / "adapter_model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert math.isfinite(rows[-1]["policy/grad_norm"])


def test_too_many_in_a_row_stop_cleanly(tiny_model_dir, prompts_file, tmp_path, monkeypatch, capsys):
    poison(monkeypatch, lambda n: n > 4)  # everything from step 2 on
    out = tmp_path / "run"
    assert main(args_for(tiny_model_dir, prompts_file, out, "--set", "train.max_nonfinite_in_a_row=2")) == 2
    err = capsys.readouterr().err
    assert "training stopped at step 2: 2 updates in a row had a non-finite loss or gradient" in err
    assert "step-000001" in err and "Traceback" not in err
    checkpoint = out / "checkpoints" / "step-000001"
    assert (checkpoint / "trainer_state.pt").is_file() and not (out / "final").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(w).all() for w in load_file(str(checkpoint / "adapter_model.safetensors")).values())
