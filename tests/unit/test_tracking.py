"""Metric sinks: each writes what its tool reads, offline (W&B in offline mode, TensorBoard event files)."""

import json
import math

import pytest

from rlhflab.config import build_config
from rlhflab.tracking import JsonlSink, TensorBoardSink, Trackers, WandbSink, markdown_table

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


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B in offline mode, every file it writes under tmp_path, no login, no git, no console capture."""
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
    yield wandb
    wandb.teardown()


def test_wandb_sink_offline_writes_run(tmp_path, wandb_offline):
    cfg = build_config(preset="demo-ppo")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sink = WandbSink(cfg, run_dir)
    try:
        for metrics in STEPS:
            sink.log(metrics)
    finally:
        sink.close()
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


ROWS = [
    {"step": 10, "prompt": "The movie was", "completion": "great | fun\nfilm", "score": 0.75},
    {"step": 10, "prompt": "I hated it", "completion": "", "score": -0.5},
]


def test_markdown_table_escapes_pipes_and_newlines():
    assert markdown_table(ROWS).splitlines() == [
        "| step | prompt | completion | score |",
        "|---|---|---|---|",
        "| 10 | The movie was | great \\| fun film | +0.750 |",
        "| 10 | I hated it |  | -0.500 |",
    ]


def test_sample_tables_reach_jsonl_tensorboard_and_wandb(tmp_path, wandb_offline):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    overrides = ["tracking.progress=false", "tracking.tensorboard=true", "tracking.wandb=true"]
    cfg = build_config(preset="demo-ppo", overrides=overrides)
    trackers = Trackers(cfg, tmp_path, total_steps=10)
    try:
        trackers.log({**STEPS[0], "step": 10})
        trackers.log_samples(10, ROWS)
    finally:
        trackers.close()
    assert [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()] == ROWS
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    (text_event,) = events.Tensors("samples/text_summary")
    assert text_event.step == 10
    assert text_event.tensor_proto.string_val[0].decode() == markdown_table(ROWS)
    (table_file,) = (tmp_path / "wandb").glob("offline-run-*/files/media/table/samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["step", "prompt", "completion", "score"]
    assert table["data"] == [[10, "The movie was", "great | fun\nfilm", 0.75], [10, "I hated it", "", -0.5]]


def test_wandb_resume_continues_the_same_run(tmp_path, wandb_offline):
    """A resumed training run logs into the W&B run it started (its id is kept in the run directory), not a new
    one; a new run directory starts a new W&B run."""
    cfg = build_config(preset="demo-ppo")
    run_dir, other = tmp_path / "run", tmp_path / "other"
    run_dir.mkdir()
    other.mkdir()
    ids = []
    for directory, metrics in ((run_dir, STEPS[:1]), (run_dir, STEPS[1:]), (other, STEPS)):
        sink = WandbSink(cfg, directory)
        try:
            for row in metrics:
                sink.log(row)
            ids.append(sink.run.id)
        finally:
            sink.close()
    assert ids[0] == ids[1] != ids[2]
    assert (run_dir / "wandb-run-id").read_text().strip() == ids[0]
    offline = list((run_dir / "wandb").glob("offline-run-*"))  # offline-run-DATE_TIME-ID, then -ID-1 for the resume
    assert len(offline) == 2 and {p.name.split("-")[3] for p in offline} == {ids[0]}
