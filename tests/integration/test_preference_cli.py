"""Through the CLI on the tiny random-weight model: `rlhflab rm` (2 steps), PPO against that reward model,
`rlhflab dpo` (2 steps, a checkpoint, an exact resume), and the one-line errors of bad preference files."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import LENGTH_REWARD
from peft import PeftModel
from safetensors.torch import load_file

from rlhflab.cli import main
from rlhflab.config import RewardComponent
from rlhflab.data.pairs import demo_pairs, write_pairs
from rlhflab.models.loading import load_causal_lm
from rlhflab.models.reward_model import RewardModel, encode_texts
from rlhflab.rewards.base import build_judge

TRL_NAMES = ["rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"]


def argv(command: str, model_dir: Path, out: Path, *sets: str, steps: int = 2) -> list[str]:
    config = out.parent / "empty.yaml"
    config.write_text("{}\n")
    common = [f"model.name={model_dir}", "model.device=cpu", "tracking.progress=false", "train.micro_batch_size=2"]
    common += ["preference.batch_size=4", "preference.max_length=24", "train.lr=1e-2", "train.scoring_batch_size=8"]
    args = [command, "--config", str(config), "--output-dir", str(out), "--steps", str(steps)]
    return args + [a for s in [*common, *sets] for a in ("--set", s)]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    write_pairs(path, demo_pairs(20, seed=3))
    return path


@pytest.fixture(scope="module")
def rm_run(tiny_model_dir, pairs_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "run"
    assert main(argv("rm", tiny_model_dir, out, f"preference.file={pairs_file}", "preference.eval_every=1")) == 0
    return out


def test_rm_writes_a_peft_adapter_a_head_and_a_model_card(rm_run, tiny_model_dir):
    lines = [json.loads(line) for line in (rm_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # zero head: every score 0 at step 1
    for key in ["loss", *TRL_NAMES, "eval/loss", "eval/accuracy", "eval/margin", "lr", "time/step"]:
        assert all(math.isfinite(m[key]) for m in lines), key
    summary = json.loads((rm_run / "eval" / "summary.json").read_text())
    assert summary["before"]["num_pairs"] == 2 and summary["before"]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert set(summary["after"]) >= {"loss", "accuracy", "margin"}
    final = rm_run / "final"
    assert "Bradley-Terry" in (final / "README.md").read_text()
    head = load_file(str(final / "reward_head.safetensors"))
    assert head["weight"].abs().sum() > 0  # trained away from its zero initialisation
    base = load_causal_lm(str(tiny_model_dir))
    before = {n: p.clone() for n, p in base.named_parameters()}
    peft = PeftModel.from_pretrained(base, str(final))  # PEFT format
    lora_b = [p for n, p in peft.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # LoRA B starts at zero: it moved
    merged = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in peft.named_parameters()}
    assert all(torch.equal(before[n], merged[n]) for n in before)  # base weights untouched


def test_reward_model_scores_rows_alone_as_in_a_batch_and_reloads_the_same(rm_run):
    rm = RewardModel.load(rm_run, device="cpu")
    texts = ["the movie was great", "i really hated this film because the plot was boring and long", "a"]
    batched = rm.score_texts(texts)
    alone = torch.cat([rm.score_texts([t]) for t in texts])
    assert torch.allclose(batched, alone, atol=1e-5)
    judge = build_judge(RewardComponent(name="rm", kind="reward_model", path=str(rm_run / "final"), batch_size=2))
    assert judge(
        ["the movie was", "i really", "a"], [" great", " hated this film because the plot was boring and long", ""]
    ) == pytest.approx(batched.tolist(), abs=1e-5)
    ids, mask = encode_texts(rm.tokenizer, texts, max_length=5)  # long texts keep their end, EOS last
    assert ids.shape[1] == 5 and (ids[:, -1] == rm.tokenizer.eos_token_id).all() and mask[:, -1].all()
    assert mask.sum(1).tolist() == [5, 5, 2]


def test_ppo_trains_against_the_reward_model(rm_run, tiny_model_dir, prompts_file, tmp_path):
    reward = (
        f"reward.components=[{{name: rm, kind: reward_model, path: {rm_run}, batch_size: 4}}, "
        "{name: length, kind: callable, function: 'reward_fns:length_reward', weight: 0.0}]"
    )
    out = tmp_path / "ppo"
    sets = ["data.source=file", f"data.prompts_file={prompts_file}", "rollout.batch_size=4", "rollout.max_new_tokens=4"]
    assert main(["train", *argv("train", tiny_model_dir, out, *sets, reward, "eval.enabled=false")[1:]]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(math.isfinite(m["reward/rm"]) for m in lines)


def test_dpo_two_steps_checkpoint_and_exact_resume(tiny_model_dir, pairs_file, prompts_file, tmp_path):
    out = tmp_path / "dpo"
    sets = [f"preference.file={pairs_file}", "data.source=file", f"data.prompts_file={prompts_file}"]
    sets += ["checkpoint.every=1", "rollout.max_new_tokens=4", "eval.max_prompts=2", LENGTH_REWARD]
    sets += ["preference.max_length=64"]  # answers share their first words: 24 tiny-BPE tokens can be all alike
    assert main(argv("dpo", tiny_model_dir, out, *sets)) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert lines[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference at step 1
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    for key in [*TRL_NAMES, "logps/chosen", "logps/rejected", "eval/rewards/accuracies"]:
        assert math.isfinite(lines[-1][key]), key
    assert lines[1]["loss"] != lines[0]["loss"]  # the adapter moved
    assert (out / "final" / "adapter_model.safetensors").is_file()
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert {"before", "after"} <= set(summary) and "ref_perplexity" in summary["after"]
    assert set(json.loads((out / "eval" / "pairs.json").read_text())) == {"before", "after"}
    assert (out / "report.md").is_file()

    # resume from the step-1 checkpoint: step 2 is redone exactly
    assert main(["dpo", "--resume", "--output-dir", str(out)]) == 0
    again = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in again] == [1, 2]
    for key in ["loss", *TRL_NAMES, "logps/chosen"]:
        assert again[1][key] == pytest.approx(lines[1][key], abs=1e-6), key


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ('{"prompt": "a", "chosen": "b"}\n', "pairs.jsonl:1: missing field 'rejected'"),
        ("\n\n", "holds no preference pairs"),
        ('{"prompt": "a", "chosen": " b"}\n{"prompt": "a", "chosen": " b", "rejected": " b"}\n', "pairs.jsonl:1"),
        ('{"prompt": "a", "chosen": " b", "rejected": " b"}\n', "pairs.jsonl:1: chosen and rejected are identical"),
    ],
)
def test_bad_preference_files_are_one_line_errors(tiny_model_dir, tmp_path, capsys, rows, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text(rows)
    assert main(argv("rm", tiny_model_dir, tmp_path / "run", f"preference.file={path}")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written before the data is known to be good


def test_rm_and_dpo_need_pairs(tiny_model_dir, tmp_path, capsys):
    assert main(argv("dpo", tiny_model_dir, tmp_path / "run")) == 2
    assert "preference.file / preference.dataset" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["rm", "dpo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_code:
        main([command, "--help"])
    assert exit_code.value.code == 0 and "preference" in capsys.readouterr().out


def test_a_reward_model_component_needs_a_path_to_a_reward_model(tiny_model_dir, prompts_file, tmp_path, capsys):
    sets = ["data.source=file", f"data.prompts_file={prompts_file}"]
    no_path = "reward.components=[{name: rm, kind: reward_model}]"
    assert main(argv("train", tiny_model_dir, tmp_path / "a", *sets, no_path)) == 2
    assert "of kind reward_model needs path" in capsys.readouterr().err
    not_rm = f"reward.components=[{{name: rm, kind: reward_model, path: {tmp_path}}}]"
    assert main(argv("train", tiny_model_dir, tmp_path / "b", *sets, not_rm)) == 2
    assert "holds no reward model" in capsys.readouterr().err
