"""Model card (final/README.md) and `push`: metadata the Hub reads, content, and uploads only when asked."""

import json
from pathlib import Path

import huggingface_hub
import pytest
import yaml

from rlhflab.config import build_config, save_config
from rlhflab.errors import UserError
from rlhflab.modelcard import DEMO_BASE_MODEL, push, write_model_card


def make_run_dir(root: Path, preset: str = "demo-ppo", overrides=(), with_eval: bool = True) -> Path:
    """A finished run directory with fake adapter files and synthetic metrics and evaluation."""
    run_dir = root / "run"
    final = run_dir / "final"
    final.mkdir(parents=True)
    cfg = build_config(preset=preset, overrides=[f"output_dir={run_dir}", *overrides])
    save_config(cfg, run_dir / "config.yaml")
    (final / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (final / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/cache/demo/model"}))
    if cfg.algorithm.name == "ppo":
        (final / "critic").mkdir()
        (final / "critic" / "adapter_model.safetensors").write_bytes(b"\0" * 512)
        (final / "value_head.safetensors").write_bytes(b"\0" * 100)
    row = {"step": 40, "objective/scores": 0.71, "objective/kl": 2.5, "gen/length": 27.4, "reward/vader": 0.71}
    if cfg.algorithm.name == "ppo":
        row["loss/value"] = 0.013
    (run_dir / "metrics.jsonl").write_text(json.dumps({**row, "step": 39}) + "\n" + json.dumps(row) + "\n")
    if with_eval:
        (run_dir / "eval").mkdir()
        for name, score in (("before", -0.49), ("after", 0.95)):
            line = {"prompt": "I really hated this film because", "completion": f" {name} | text", "score": score}
            (run_dir / "eval" / f"{name}.jsonl").write_text(json.dumps(line) + "\n")
        side = {k: 0.5 for k in ("score_mean", "positive_share", "distinct_2", "mean_length", "eos_rate")}
        summary = {"before": {**side, "ref_perplexity": 3.2}, "after": {**side, "ref_perplexity": 3.4}}
        (run_dir / "eval" / "summary.json").write_text(json.dumps(summary))
    return run_dir


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    return yaml.safe_load(head)


def test_card_front_matter_names_base_model_and_tags(tmp_path):
    run_dir = make_run_dir(tmp_path)
    path = write_model_card(run_dir)
    assert path == run_dir / "final" / "README.md"
    meta = front_matter(path.read_text())
    assert meta["base_model"] == DEMO_BASE_MODEL
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "text-generation"
    assert {"lora", "rlhf", "rlhflab", "ppo"} <= set(meta["tags"])


def test_card_content(tmp_path):
    run_dir = make_run_dir(tmp_path)
    card = write_model_card(run_dir).read_text()
    for heading in ("## Architecture", "## Hyper-parameters", "## Final training metrics", "## How to load"):
        assert heading in card
    assert "**Critic**" in card and "**Reference**" in card and "**Judge**" in card
    assert "| `algorithm.kl_coef` | 0.02 |" in card  # the demo-ppo preset's value
    assert "| `train.lr` | 0.001 |" in card
    assert "| `objective/scores` | 0.71 |" in card and "| `step` | 40 |" in card  # the last line
    assert "| mean score | +0.500 | +0.500 |" in card
    assert "| I really hated this film because | before | -0.49 | before \\| text |" in card
    assert "PeftModel.from_pretrained(base, " in card
    assert "/cache/demo/model" in card  # where the demo base model was


def test_card_for_hub_model_and_group_algorithm(tmp_path):
    run_dir = make_run_dir(
        tmp_path, preset="demo-grpo", overrides=["model.name=EleutherAI/pythia-70m"], with_eval=False
    )
    card = write_model_card(run_dir).read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "EleutherAI/pythia-70m"
    assert "grpo" in meta["tags"] and "ppo" not in meta["tags"]
    assert "**Critic**" not in card and "`algorithm.vf_coef`" not in card and "`critic.r`" not in card
    assert 'AutoModelForCausalLM.from_pretrained("EleutherAI/pythia-70m")' in card
    assert "## Evaluation" not in card


def test_card_for_local_base_model_leaves_it_out_of_the_metadata(tmp_path):
    local = tmp_path / "my-model"
    local.mkdir()
    run_dir = make_run_dir(tmp_path, overrides=[f"model.name={local}"])
    card = write_model_card(run_dir).read_text()
    assert "base_model" not in front_matter(card)  # the Hub rejects local paths there
    assert str(local) in card


def test_card_needs_final(tmp_path):
    run_dir = make_run_dir(tmp_path)
    for path in sorted((run_dir / "final").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (run_dir / "final").rmdir()
    with pytest.raises(UserError, match="no final/"):
        write_model_card(run_dir)


class FakeApi:
    """Stands in for huggingface_hub.HfApi: records the calls, uploads nothing."""

    calls: list = []

    def create_repo(self, repo_id, **kwargs):
        FakeApi.calls.append(("create_repo", repo_id, kwargs))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        FakeApi.calls.append(("upload_folder", kwargs))


class NoApi:
    def __init__(self, *args, **kwargs):
        raise AssertionError("a dry run must not talk to the Hub")


def test_push_dry_run_lists_files_and_uploads_nothing(tmp_path, monkeypatch, capsys):
    run_dir = make_run_dir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoApi)
    listing = push(run_dir, "someone/demo-ppo", dry_run=True)
    names = [line.split(" (")[0] for line in listing]
    assert names == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "critic/adapter_model.safetensors",
        "value_head.safetensors",
    ]
    assert "adapter_model.safetensors (2.0 KB)" in listing and "value_head.safetensors (100 B)" in listing
    out = capsys.readouterr().out
    assert "dry run" in out and "someone/demo-ppo" in out and "critic/adapter_model.safetensors" in out
    assert 'PeftModel.from_pretrained(base, "someone/demo-ppo")' in (run_dir / "final" / "README.md").read_text()


def test_push_uploads_final_folder(tmp_path, monkeypatch):
    run_dir = make_run_dir(tmp_path)
    FakeApi.calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    push(run_dir, "someone/demo-ppo", dry_run=False, private=True)
    (_, repo_id, create_kwargs), (_, upload_kwargs) = FakeApi.calls
    assert repo_id == "someone/demo-ppo" and create_kwargs["exist_ok"] and create_kwargs["private"]
    assert Path(upload_kwargs["folder_path"]) == run_dir / "final"
    assert upload_kwargs["repo_id"] == "someone/demo-ppo"


def test_push_not_logged_in(tmp_path, monkeypatch):
    run_dir = make_run_dir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", NoApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(UserError, match="not logged in"):
        push(run_dir, "someone/demo-ppo", dry_run=False)


def test_push_network_error_is_one_line(tmp_path, monkeypatch):
    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise ConnectionError("Name or service not known\nmore detail")

    run_dir = make_run_dir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_fake")
    with pytest.raises(UserError) as info:
        push(run_dir, "someone/demo-ppo", dry_run=False)
    assert "could not reach the Hugging Face Hub" in str(info.value) and "\n" not in str(info.value)


def test_push_needs_final_and_a_valid_repo_id(tmp_path):
    with pytest.raises(UserError, match="final/adapter_model.safetensors"):
        push(tmp_path, "someone/x", dry_run=True)
    run_dir = make_run_dir(tmp_path)
    for bad in ("no-namespace", "a/b/c", "bad name/x"):
        with pytest.raises(UserError, match="--repo-id"):
            push(run_dir, bad, dry_run=True)


def test_smollm2_names_its_hub_repo_as_base_model():
    from rlhflab.modelcard import base_model_id

    assert base_model_id("smollm2-135m") == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_card_names_the_value_head(tmp_path):
    from rlhflab.reporting.model_card import architecture_lines

    (tmp_path / "value_head.safetensors").write_bytes(b"\0")
    for head, words in [(None, "a linear value head"), ("mlp", "an MLP (Linear → GELU → Linear) value head")]:
        cfg = {"critic": {"head": head} if head else {}}
        assert any(words in line for line in architecture_lines(cfg, tmp_path, "demo"))
