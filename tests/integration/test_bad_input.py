"""Bad input: one clear line naming the problem, exit code 2, no traceback, earlier work untouched."""

import pytest
from conftest import train_argv

from rlhflab.cli import main


@pytest.fixture()
def base_args(tiny_model_dir, prompts_file, tmp_path):
    def make(*extra, out=None):
        return train_argv(
            tiny_model_dir, prompts_file, out or tmp_path / "run", *extra, steps=1, batch=4, micro=2, new_tokens=3
        )

    return make


def one_line_error(capsys, fragment):
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert fragment in err, err
    return err


def test_bad_inputs(base_args, tmp_path, capsys):
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("train: {steps: [1, 2}\n")
    empty_prompts = tmp_path / "empty.txt"
    empty_prompts.write_text("\n  \n")
    bad_jsonl = tmp_path / "bad.jsonl"
    bad_jsonl.write_text('{"prompt": "ok"}\n{not json}\n')
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.yaml").write_text("{}\n")
    cases = [
        (["train", "--preset", "no-such-preset"], "unknown preset 'no-such-preset'; available presets:"),
        (["train", "--config", str(tmp_path / "missing.yaml")], "does not exist"),
        (["train", "--config", str(bad_yaml)], "malformed YAML (line 1)"),
        (["train"], "give --preset NAME or --config FILE"),
        (base_args("--set", "rollout.max_new_tokens=abc"), "rollout.max_new_tokens: expected an integer, got 'abc'"),
        (base_args("--set", "rollout.batch_size=0"), "rollout.batch_size: must be a positive integer, got 0"),
        (base_args("--set", "train.lr=-0.1"), "train.lr: must be > 0, got -0.1"),
        (base_args("--set", "train.lr"), "expected dotted.key=value"),
        (base_args("--set", "train.learning_rate=1"), "unknown config key 'train.learning_rate'; valid keys"),
        (base_args("--set", "algorithm.name=a2c"), "choose one of ppo, rloo, grpo, dpo, rm"),
        (base_args("--set", "train.micro_batch_size=3"), "must be divisible by train.micro_batch_size (3)"),
        (base_args("--set", "model.name=/no/such/model"), "local model directory '/no/such/model' does not exist"),
        (base_args("--set", f"data.prompts_file={tmp_path}/none.txt"), "none.txt' does not exist"),
        (base_args("--set", f"data.prompts_file={empty_prompts}"), "holds no prompts"),
        (base_args("--set", f"data.prompts_file={bad_jsonl}"), "bad.jsonl:2 is not valid JSON"),
        (
            base_args("--set", "reward.components=[{name: r, kind: callable, function: 'nowhere:fn'}]"),
            "cannot import 'nowhere:fn'",
        ),
        (base_args("--set", "data.prompts_file=null"), "data.prompts_file: required when data.source is 'file'"),
        (["train", "--resume", "--output-dir", str(tmp_path / "absent")], "is not a run directory"),
        (["train", "--resume", "--output-dir", str(no_ckpt)], "has no complete checkpoint to resume from"),
        (["eval", "--run", str(tmp_path)], "is not a run directory (no config.yaml)"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        one_line_error(capsys, fragment)
    assert len(cases) >= 15


def test_existing_run_is_never_harmed(base_args, tmp_path, capsys):
    out = tmp_path / "done"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 7\n")
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    assert main(base_args(out=out)) == 2
    one_line_error(capsys, "already holds a run; pass --overwrite")
    assert (out / "config.yaml").read_text() == "seed: 7\n" and (out / "metrics.jsonl").read_text() == '{"step": 1}\n'


def test_out_of_memory_names_the_knobs(monkeypatch, capsys):
    import torch

    import rlhflab.cli as cli

    def boom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli, "cmd_train", boom)
    assert cli.main(["train", "--preset", "demo-ppo"]) == 2
    err = one_line_error(capsys, "Lower train.micro_batch_size")
    assert "train.activation_checkpointing=selective" in err and "train.scoring_batch_size" in err


def test_a_directory_that_is_not_a_run_is_never_written(base_args, tiny_model_dir, prompts_file, tmp_path, capsys):
    """A non-empty --output-dir without an rlhflab run in it (the user's own metrics.jsonl, a project folder with
    its own config.yaml) is refused with one line, with or without --overwrite, and nothing in it changes."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "metrics.jsonl").write_text('{"mine": 1}\n')
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("database: {host: localhost}\n")  # not an rlhflab config
    (project / "notes.txt").write_text("keep me\n")
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    compare_args = ["compare", "--output-dir", str(mine), "--steps", "1"]
    sft_args = ["sft", "--model", str(tiny_model_dir), "--data", str(prompts_file), "--output-dir", str(mine)]
    not_a_run = "is not empty and does not hold a run written by rlhflab"
    cases = [
        (base_args(out=mine), f"--output-dir: {mine} {not_a_run}"),
        (base_args("--overwrite", out=mine), f"--output-dir: {mine} {not_a_run}"),
        (base_args("--overwrite", out=project), f"--output-dir: {project} {not_a_run}"),
        (base_args(out=a_file), f"--output-dir: {a_file} is a file"),
        (sft_args, f"--output-dir: {mine} is not empty and does not hold an SFT output written by rlhflab"),
        (compare_args, f"--output-dir: {mine} is not empty and does not hold a comparison written by rlhflab"),
    ]
    for argv, fragment in cases:
        assert main(argv) == 2, argv
        one_line_error(capsys, fragment)
    assert sorted(p.name for p in mine.iterdir()) == ["metrics.jsonl"]
    assert (mine / "metrics.jsonl").read_text() == '{"mine": 1}\n'
    assert sorted(p.name for p in project.iterdir()) == ["config.yaml", "notes.txt"]
    assert (project / "config.yaml").read_text() == "database: {host: localhost}\n"
    assert a_file.read_text() == "x\n"


def test_overwrite_replaces_an_rlhflab_run_and_an_empty_directory_is_used(base_args, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(base_args(out=empty)) == 0 and (empty / "config.yaml").is_file()
    (empty / "stale.txt").write_text("from the old run\n")
    assert main(base_args("--overwrite", out=empty)) == 0
    assert not (empty / "stale.txt").exists() and len((empty / "metrics.jsonl").read_text().splitlines()) == 1


def test_sft_refuses_to_replace_its_own_output_without_overwrite(tiny_model_dir, prompts_file, tmp_path, capsys):
    out = tmp_path / "sft"
    out.mkdir()
    (out / "sft_stats.json").write_text("{}\n")
    argv = ["sft", "--model", str(tiny_model_dir), "--data", str(prompts_file), "--output-dir", str(out)]
    assert main(argv) == 2
    one_line_error(capsys, f"--output-dir: {out} already holds an SFT output; pass --overwrite to replace it")
    assert (out / "sft_stats.json").read_text() == "{}\n"
