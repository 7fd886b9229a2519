"""The reference recipe's optional SFT stage: the `imdb-pythia-410m-sft` preset, run through `rlhflab sft` on the
tiny model, then merged into the base before RL (`model.sft_adapter`) so that the reference is the SFT model."""

import json

import pytest
import torch
from conftest import train_argv
from peft import PeftModel

from rlhflab.cli import main
from rlhflab.config import build_config
from rlhflab.errors import UserError
from rlhflab.models.loading import load_causal_lm
from rlhflab.session import load_setup
from rlhflab.sft import build_recipe


def test_sft_preset_is_the_reference_recipe():
    recipe = build_recipe("imdb-pythia-410m-sft")
    assert recipe.model == "EleutherAI/pythia-410m-deduped"
    assert (recipe.data.source, recipe.data.split) == ("imdb", "train[:2000]")
    s = recipe.sft
    assert (s.lr, s.epochs, s.batch_size, s.grad_accum, s.max_length, s.packing) == (1e-4, 1, 4, 4, 512, True)
    assert (s.lora.r, s.lora.alpha, s.lora.dropout, s.lora.bias) == (16, 32, 0.05, "none")
    assert s.lora.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    # the RL preset's LoRA matches, and the adapter is merged only when asked for
    assert build_config(preset="imdb-pythia-410m-ppo").model.sft_adapter is None


def test_sft_preset_errors_are_one_line():
    with pytest.raises(UserError, match="unknown SFT preset 'nope'; available: imdb-pythia-410m-sft"):
        build_recipe("nope")
    with pytest.raises(UserError, match="unknown config key 'sft.lora.rank'"):
        build_recipe("imdb-pythia-410m-sft", ["sft.lora.rank=8"])
    with pytest.raises(UserError, match="data.file: required"):
        build_recipe("imdb-pythia-410m-sft", ["data.source=file"])


@pytest.fixture(scope="module")
def sft_adapter(tiny_model_dir, prompts_file, tmp_path_factory):
    """`rlhflab sft --preset imdb-pythia-410m-sft` on the tiny model and a local file (no hub), short blocks."""
    out = tmp_path_factory.mktemp("sft") / "adapter"
    sets = ["data.source=file", f"data.file={prompts_file}", "sft.max_length=16", "sft.batch_size=2"]
    sets += ["sft.grad_accum=1", "sft.lr=1e-2", "sft.epochs=20", "sft.device=cpu", "sft.progress=false"]
    argv = ["sft", "--preset", "imdb-pythia-410m-sft", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    return out


def test_sft_preset_writes_a_peft_adapter(sft_adapter, tiny_model_dir):
    config = json.loads((sft_adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32
    assert sorted(config["target_modules"]) == sorted(["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"])
    stats = json.loads((sft_adapter / "sft_stats.json").read_text())
    assert stats["config"]["packing"] is True and stats["loss_last"] < stats["loss_first"]
    assert (sft_adapter / "tokenizer.json").is_file()


def test_merged_sft_adapter_is_the_reference_and_the_start(sft_adapter, tiny_model_dir, prompts_file, tmp_path):
    argv = train_argv(tiny_model_dir, prompts_file, tmp_path / "run", "--set", f"model.sft_adapter={sft_adapter}")
    cfg = build_config(config_file=argv[2], overrides=[argv[i + 1] for i, a in enumerate(argv) if a == "--set"])
    setup = load_setup(cfg)
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    plain = load_causal_lm(str(tiny_model_dir))
    sft = PeftModel.from_pretrained(load_causal_lm(str(tiny_model_dir)), str(sft_adapter))
    with torch.no_grad():
        expected, untouched = sft(input_ids=ids).logits, plain(input_ids=ids).logits
        with setup.roles.reference_model() as reference:
            got_reference = reference(input_ids=ids).logits
        got_policy = setup.roles.actor()(input_ids=ids).logits  # fresh LoRA (B = 0): the policy starts at SFT
    assert (expected - untouched).abs().max() > 1e-3  # the SFT stage changed the model
    torch.testing.assert_close(got_reference, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_policy, expected, rtol=0, atol=1e-5)


def test_two_rl_steps_on_the_sft_model_and_the_card_says_so(sft_adapter, tiny_model_dir, prompts_file, tmp_path):
    out = tmp_path / "run"
    extra = ["--set", f"model.sft_adapter={sft_adapter}", "--set", "eval.max_prompts=2"]
    assert main(train_argv(tiny_model_dir, prompts_file, out, *extra)) == 0
    card = (out / "final" / "README.md").read_text()
    assert f"with the SFT adapter `{sft_adapter}` merged" in card
    assert f'PeftModel.from_pretrained(base, "{sft_adapter}").merge_and_unload()' in card


def test_missing_sft_adapter_is_a_one_line_error(tiny_model_dir, prompts_file, tmp_path, capsys):
    argv = train_argv(tiny_model_dir, prompts_file, tmp_path / "run", "--set", "model.sft_adapter=./no/such/dir")
    assert main(argv) == 2
    assert "model.sft_adapter: local model directory './no/such/dir' does not exist" in capsys.readouterr().err
