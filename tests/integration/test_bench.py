"""`rlhflab bench` at the tiny shape: both layouts run through the real loop and report finite, positive numbers."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhflab.cli import main

LAYOUT_KEYS = {
    "roles",
    "peak_rss_bytes",
    "peak_cuda_bytes",
    "step_seconds",
    "split_seconds",
    "tokens_per_second",
    "forward_passes_per_step",
    "forward_calls",
    "batch_passes",
    "update_flops",
    "update_flops_per_second",
    "update_fraction_of_gemm_peak",
}


def test_bench_tiny_one_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--model-shape", "tiny", "--steps", "1", "--batch", "4", "--json", str(out)]
    assert main([*argv, "--set", "rollout.max_new_tokens=8"]) == 0
    assert "shared / separate" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["gemm_peak_flops_per_second"] > 0
    assert report["machine"]["heap_allocator"] in ("glibc", "jemalloc", "tcmalloc", "mimalloc", "system")
    assert [r["roles"] for r in report["layouts"]] == ["shared", "separate"]
    for layout in report["layouts"]:
        assert LAYOUT_KEYS <= set(layout)
        for key in ("peak_rss_bytes", "step_seconds", "tokens_per_second", "update_flops_per_second"):
            assert math.isfinite(layout[key]) and layout[key] > 0, key
        split = layout["split_seconds"]
        assert set(split) == {"generate", "reward", "logprobs", "ref_logprobs", "values", "update", "other"}
        assert all(math.isfinite(v) and v >= 0 for v in split.values()) and split["update"] > 0
        # one pass each for old logprobs, reference logprobs and values; K = 4 epochs x (policy + critic) to train
        assert layout["batch_passes"]["logprobs"] == 1 and layout["batch_passes"]["values"] == 1
        assert layout["batch_passes"]["ref_logprobs"] == 1 and layout["batch_passes"]["update"] == 8
    assert report["shared_over_separate"]["peak_rss"] > 0


def test_bench_user_errors(capsys):
    assert main(["bench", "--model-shape", "huge"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model-shape" in err
    assert main(["bench", "--roles", "shared,copies"]) == 2
    assert "--roles" in capsys.readouterr().err


def test_bench_model_is_written_in_the_run_dtype(tmp_path):
    """A bf16 run maps bf16 weights: converting fp32 ones at load would put both copies into its peak memory."""
    from safetensors import safe_open

    from rlhflab.bench import BenchOptions, build_model_dir

    model_dir = build_model_dir(BenchOptions(model_shape="tiny", dtype="bf16"), tmp_path / "model")
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} == {"BF16"}


def test_a_failing_layout_run_shows_its_error_and_names_the_layout(monkeypatch, capfd):
    """The worker's stderr reaches the user as it comes (progress bar, errors); the parent adds which run failed."""
    monkeypatch.setenv("CXX", "no-such-compiler")  # train.compile fails at load, inside the worker process
    argv = ["bench", "--model-shape", "tiny", "--steps", "1", "--batch", "4", "--roles", "shared"]
    assert main([*argv, "--set", "train.compile=true"]) == 2
    err = capfd.readouterr().err
    assert "rlhflab bench: error: train.compile: torch.compile needs a C++ compiler" in err
    assert "the shared run failed (exit status 1; its error is above)" in err and "Traceback" not in err


def test_bench_counts_the_lm_head_whichever_path_computes_the_logprobs(tiny_model_dir, prompts_file, monkeypatch):
    """The hidden-state log-probs multiply the head's weight without calling it: the meter counts those products
    as the Linear hooks count the logits path's (forward, and the backward's product for the hidden states)."""
    import torch

    from rlhflab.bench_worker import Meter
    from rlhflab.config import build_config
    from rlhflab.models import forward
    from rlhflab.ops import logprobs_from_logits
    from rlhflab.rollout import sample_rollout
    from rlhflab.session import load_setup

    cfg = build_config(
        overrides=[
            f"model.name={tiny_model_dir}",
            "model.device=cpu",
            f"data.prompts_file={prompts_file}",
            "data.source=file",
            "rollout.max_new_tokens=6",
        ]
    )
    setup = load_setup(cfg)
    actor = setup.roles.actor()
    batch, _ = sample_rollout(actor, setup.tokenizer, ["the movie was", "honestly"], cfg, torch.Generator(), "cpu")
    meter = Meter(torch.device("cpu"))
    meter.instrument(actor)
    remove_hook = forward.register_head_hook(meter.count_head)
    counted = []
    for logprobs_of in (
        lambda: forward.response_logprobs(actor, batch, 1.0)[0],
        lambda: logprobs_from_logits(forward.forward_logits(actor, batch), batch.response_ids),
    ):
        meter.new_step()
        with meter.phase("update"):
            logprobs_of().sum().backward()
            with torch.no_grad():
                logprobs_of()
        counted.append(meter.current["flops"]["update"])
    remove_hook()
    head = actor.get_output_embeddings().weight
    assert counted[0] == counted[1] > 3 * 2.0 * batch.response_ids.numel() * head.numel()


JEMALLOC = Path("/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")


@pytest.mark.skipif(not JEMALLOC.exists(), reason="needs jemalloc (Debian: apt install libjemalloc2)")
def test_bench_names_a_preloaded_heap_allocator():
    code = "from rlhflab.bench import heap_allocator; print(heap_allocator())"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    env = {**os.environ, "LD_PRELOAD": str(JEMALLOC)}
    preloaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert (plain.stdout.strip(), preloaded.stdout.strip()) == ("glibc", "jemalloc")
