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
import yaml
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


def fake_run(tmp_path, *overrides):
    """A run directory with a resolved config.yaml and a (placeholder) checkpoint at step 2."""
    from rlhflab.config import build_config, save_config

    run = tmp_path / "fake"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    (run / "checkpoints" / "step-000002" / "trainer_state.pt").write_bytes(b"")
    save_config(build_config(preset="demo-ppo", overrides=["train.steps=4", *overrides]), run / "config.yaml")
    return run


def test_resume_refuses_what_it_cannot_honour(tmp_path, capsys):
    """--resume reads the run's own config.yaml: a seed, preset, config file, --set or --overwrite given with it
    used to be ignored without a word. Each is one line now, and nothing in the run directory changes."""
    run = fake_run(tmp_path)
    (tmp_path / "other.yaml").write_text("{}\n")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    resume = ["train", "--resume", "--output-dir", str(run)]
    cases = [
        (["--seed", "3"], "--resume: --seed cannot change a run"),
        (["--preset", "demo-ppo"], "--resume: --preset cannot change a run"),
        (["--config", str(tmp_path / "other.yaml")], "--resume: --config cannot change a run"),
        (["--set", "train.lr=1"], "--resume: --set cannot change a run"),
        (["--overwrite"], "--resume: --overwrite cannot change a run"),
        (["--steps", "2"], "--steps 2: the newest checkpoint is at step 2"),
        (["--steps", "8"], "--steps 8: train.lr_schedule is cosine"),
    ]
    for extra, fragment in cases:
        assert main(resume + extra) == 2, extra
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.strip().count("\n") == 0 and fragment in err, err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resume_with_more_steps_extends_a_constant_schedule_run(tiny_model_dir, prompts_file, tmp_path):
    """--steps N with --resume extends a finished (or interrupted) run of a constant learning-rate schedule: it
    goes on from the newest checkpoint as if it had been started with N steps."""
    constant = ("--set", "train.lr_schedule=constant", "--set", "train.warmup_ratio=0")
    full, short = tmp_path / "full", tmp_path / "short"
    assert main(args_for(tiny_model_dir, prompts_file, full, steps=4) + list(constant)) == 0
    assert main(args_for(tiny_model_dir, prompts_file, short, steps=2) + list(constant)) == 0
    assert main(["train", "--resume", "--output-dir", str(short), "--steps", "4"]) == 0
    assert metrics(short) == metrics(full)
    assert yaml.safe_load((short / "config.yaml").read_text())["train"]["steps"] == 4
    a, b = weights(full), weights(short)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
