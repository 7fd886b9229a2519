"""Exact resume: a run killed with SIGKILL and resumed logs the same metrics and ends with the same weights."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import train_argv
from safetensors.torch import load_file

from rlhflab.checkpoint import latest_checkpoint
from rlhflab.cli import main

TIMING = ("time/", "perf/")


def args_for(model_dir, prompts_file, out, steps=4):
    extra = [
        "train.lr=5e-3",
        "algorithm.ppo_epochs=2",
        "checkpoint.every=1",
        "checkpoint.keep=10",
        "eval.enabled=false",
        "tracking.samples_every=1",
    ]
    return train_argv(
        model_dir,
        prompts_file,
        out,
        *[a for v in extra for a in ("--set", v)],
        steps=steps,
        batch=4,
        micro=2,
        new_tokens=5,
    )


def metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(TIMING)} for row in rows]


def weights(run):
    return load_file(str(run / "final" / "adapter_model.safetensors"))


def test_sigkill_then_resume_is_exact(tiny_model_dir, prompts_file, tmp_path):
    full = tmp_path / "full"
    assert main(args_for(tiny_model_dir, prompts_file, full)) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhflab", *args_for(tiny_model_dir, prompts_file, killed)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step-000002").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()

    assert main(["train", "--resume", "--output-dir", str(killed)]) == 0
    assert metrics(killed) == metrics(full)
    assert (killed / "samples.jsonl").read_text() == (full / "samples.jsonl").read_text()  # same completions
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_partial_checkpoint_is_ignored(tiny_model_dir, prompts_file, tmp_path):
    run = tmp_path / "run"
    assert main(args_for(tiny_model_dir, prompts_file, run, steps=3)) == 0
    ckpts = run / "checkpoints"
    assert latest_checkpoint(run).name == "step-000002"  # the last step is saved as final/, not a checkpoint
    # a write killed half-way: a temp folder, and a step folder without its trainer state
    (ckpts / ".tmp-step-000003").mkdir()
    shutil.copytree(ckpts / "step-000002", ckpts / "step-000003")
    (ckpts / "step-000003" / "trainer_state.pt").unlink()
    assert latest_checkpoint(run).name == "step-000002"
    shutil.rmtree(run / "final")
    assert main(["train", "--resume", "--output-dir", str(run)]) == 0
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--resume", "--output-dir", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
