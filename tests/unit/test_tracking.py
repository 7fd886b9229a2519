"""Metric sinks: each writes what its tool reads, offline (W&B in offline mode, TensorBoard event files)."""

import json
import math

import pytest

from rlhflab.config import build_config
from rlhflab.tracking import JsonlSink, TensorBoardSink, Trackers, WandbSink

STEPS = [
    {"step": 1, "objective/scores": 0.1, "objective/kl": 0.0, "gen/length": 20.0},
    {"step": 2, "objective/scores": 0.3, "objective/kl": 0.2, "gen/length": 21.0},
]


def test_jsonl_sink_writes_one_line_per_log(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log(STEPS[0])
    sink.log({**STEPS[1], "loss/value": math.nan})
    sink.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [STEPS[0], {**STEPS[1], "loss/value": None}]  # NaN → null


def test_tensorboard_sink_writes_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    sink = TensorBoardSink(tmp_path)
    for metrics in STEPS:
        sink.log(metrics)
    sink.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
    assert len(events) == 1 and events[0].stat().st_size > 0


def test_wandb_sink_offline_writes_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    for key, value in {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_DIR": str(tmp_path),
        "WANDB_CONFIG_DIR": str(tmp_path / "config"),
        "WANDB_CACHE_DIR": str(tmp_path / "cache"),
        "WANDB_DATA_DIR": str(tmp_path / "data"),
        "WANDB_DISABLE_GIT": "true",
        "WANDB_CONSOLE": "off",
    }.items():
        monkeypatch.setenv(key, value)
    cfg = build_config(preset="demo-ppo")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = WandbSink(cfg, run_dir)
    try:
        for metrics in STEPS:
            sink.log(metrics)
    finally:
        sink.close()
        wandb.teardown()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("*.wandb"))


def test_trackers_fan_out_to_configured_sinks(tmp_path):
    pytest.importorskip("tensorboard")
    cfg = build_config(preset="demo-ppo", overrides=["tracking.progress=false", "tracking.tensorboard=true"])
    trackers = Trackers(cfg, tmp_path, total_steps=2)
    for metrics in STEPS:
        trackers.log(metrics)
    trackers.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents*"))
