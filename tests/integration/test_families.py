"""Every decoder-only family a user may bring trains through the CLI given only ``model.name`` (issue: LoRA targets,
value-head width, tokenizers as they come, chat templates and heads that are not plain, per family)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import train_argv
from families import FAMILIES, build_family_dir

from rlhflab.batch import Rollout
from rlhflab.cli import main
from rlhflab.config import build_config
from rlhflab.errors import UserError
from rlhflab.fastpaths import plain_lm_head
from rlhflab.models.forward import response_logprobs
from rlhflab.models.loading import load_causal_lm, lora_targets
from rlhflab.rollout import generate, response_mask
from rlhflab.session import load_setup

PROMPTS = ["the movie was", "i really hated this film because the plot", "honestly", "this is the worst"]

# what auto must choose: (policy targets, critic targets)
EXPECTED_TARGETS = {
    "gpt_neox": (["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], ["query_key_value"]),
    "gpt2": (["c_attn", "c_proj", "c_fc"], ["c_attn"]),
    "opt": (["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"], ["k_proj", "v_proj", "q_proj"]),
    "phi": (["q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2"], ["q_proj", "k_proj", "v_proj"]),
    "phi3": (["o_proj", "qkv_proj", "gate_up_proj", "down_proj"], ["qkv_proj"]),
}
LLAMA_TARGETS = (
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ["q_proj", "k_proj", "v_proj"],
)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_family_dir(root / family, family) for family in FAMILIES}


def family_cfg(model_dir, prompts_file, *extra):
    return build_config(
        overrides=[
            f"model.name={model_dir}",
            "model.device=cpu",
            "model.dtype=fp32",
            "data.source=file",
            f"data.prompts_file={prompts_file}",
            "rollout.batch_size=4",
            "train.micro_batch_size=4",
            "rollout.max_new_tokens=8",
            *extra,
        ]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_targets_and_value_head_width(family, family_dirs, prompts_file):
    setup = load_setup(family_cfg(family_dirs[family], prompts_file), with_critic=True)
    roles = setup.roles
    expected = EXPECTED_TARGETS.get(family, LLAMA_TARGETS)
    assert (roles.targets["policy"], roles.targets["critic"]) == expected
    head = roles.policy.get_base_model().get_output_embeddings()
    assert roles.value_head.in_features == head.weight.shape[1]
    if family == "opt":  # project_out: 32 → 16 before the head, and no LoRA outside the blocks
        assert roles.value_head.in_features == 16
        assert not any("project" in n and "lora_" in n for n, _ in roles.policy.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_generation_logprobs_equal_a_fresh_forward_and_padding_changes_nothing(family, family_dirs, prompts_file):
    """DESIGN §3.2/§3.3 per family: sampling-time log-probs = a fresh forward's; a left-padded batch = rows alone."""
    setup = load_setup(family_cfg(family_dirs[family], prompts_file), with_critic=False)
    codec, actor = setup.codec, setup.roles.actor()
    ids, mask = codec.encode(PROMPTS, 32, setup.device)
    g = torch.Generator().manual_seed(0)
    response, sample_logprobs = generate(actor, ids, mask, 8, codec.eos_ids, codec.pad_id, g)
    rmask = response_mask(response, codec.eos_ids)
    rollout = Rollout(ids, mask, response, rmask)
    logprobs, _ = response_logprobs(actor, rollout, 1.0)
    assert torch.allclose(logprobs[rmask], sample_logprobs[rmask], atol=1e-5)
    for row, prompt in enumerate(PROMPTS):
        alone_ids, alone_mask = codec.encode([prompt], 32, setup.device)
        length = int(rmask[row].sum())
        alone = Rollout(alone_ids, alone_mask, response[row : row + 1, :length], rmask[row : row + 1, :length])
        alone_logprobs, _ = response_logprobs(actor, alone, 1.0)
        assert torch.allclose(alone_logprobs[0], logprobs[row, :length], atol=1e-5)


def test_heads_that_are_not_plain_take_the_right_path(family_dirs, prompts_file):
    """Tied embeddings and an LM head with a bias go through the hidden-state path (exact); Gemma 2's final
    soft-capping goes through the logits path."""
    plain = {}
    for family in ("qwen2", "phi", "gemma2", "smollm"):
        setup = load_setup(family_cfg(family_dirs[family], prompts_file), with_critic=False)
        plain[family] = plain_lm_head(setup.roles.actor()) is not None
    assert plain == {"qwen2": True, "phi": True, "gemma2": False, "smollm": True}


def test_tokenizers_as_they_come(family_dirs, prompts_file):
    """No pad token: nothing added to the vocabulary; BOS prepended where the tokenizer adds one; EOS = every id of
    the generation config; the chat template (auto) only for a tokenizer that has one, and prompts of one's own."""
    llama = load_setup(family_cfg(family_dirs["llama"], prompts_file), with_critic=False)
    tok = llama.tokenizer
    assert len(tok) == llama.roles.policy.get_base_model().config.vocab_size  # no token added
    assert llama.codec.bos_id == tok.convert_tokens_to_ids("<s>")
    ids, mask = llama.codec.encode(["the movie was", "honestly"], 32, "cpu")
    first = [row[m][0].item() for row, m in zip(ids, mask)]
    assert first == [llama.codec.bos_id] * 2
    assert llama.codec.pad_id == tok.convert_tokens_to_ids("</s>")  # pads with EOS: never attended, never scored

    qwen = load_setup(family_cfg(family_dirs["qwen2"], prompts_file), with_critic=False)
    qtok = qwen.tokenizer
    assert set(qwen.codec.eos_ids) == {
        qtok.convert_tokens_to_ids("<|im_end|>"),
        qtok.convert_tokens_to_ids("<|endoftext|>"),
    }
    ids, mask = qwen.codec.encode(["the movie was"], 32, "cpu")
    assert qtok.decode(ids[0][mask[0]]) == "<|im_start|>user\nthe movie was<|im_end|>\n<|im_start|>assistant\n"
    off = load_setup(family_cfg(family_dirs["qwen2"], prompts_file, "data.chat_template=off"), with_critic=False)
    ids, mask = off.codec.encode(["the movie was"], 32, "cpu")
    assert qtok.decode(ids[0][mask[0]]) == "the movie was"

    # a response ends at the first of any EOS id
    im_end, endoftext = qtok.convert_tokens_to_ids("<|im_end|>"), qtok.convert_tokens_to_ids("<|endoftext|>")
    response = torch.tensor([[5, endoftext, 7, 8], [5, 6, im_end, 8]])
    assert response_mask(response, qwen.codec.eos_ids).tolist() == [
        [True, True, False, False],
        [True, True, True, False],
    ]


def test_explicit_targets_that_match_nothing_name_the_models_layers(family_dirs, prompts_file, tmp_path, capsys):
    base = load_causal_lm(str(family_dirs["llama"]))
    with pytest.raises(UserError) as err:
        lora_targets(base, ["q_proj", "query_key_value"], "lora.target_modules")
    assert "['query_key_value']" in str(err.value) and "'gate_proj'" in str(err.value)
    # through the CLI: one line, exit code 2, no run directory
    out = tmp_path / "run"
    argv = train_argv(family_dirs["llama"], prompts_file, out, "--set", "lora.target_modules=[query_key_value]")
    assert main(argv) == 2
    assert "lora.target_modules" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_trains_two_steps_through_the_cli(family, algorithm, family_dirs, prompts_file, tmp_path):
    out = tmp_path / "run"
    argv = train_argv(family_dirs[family], prompts_file, out, batch=4, micro=2, new_tokens=6)
    argv += ["--set", f"algorithm.name={algorithm}", "--set", "eval.max_prompts=2"]
    if algorithm != "ppo":
        argv += ["--set", "rollout.samples_per_prompt=2"]
    assert main(argv) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for m in lines:
        for key in ("loss/policy", "objective/kl", "objective/scores", "policy/approxkl"):
            assert math.isfinite(m[key]), (key, m[key])
    assert abs(lines[0]["objective/kl"]) < 1e-6  # step 1: the policy is the reference
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    expected = EXPECTED_TARGETS.get(family, LLAMA_TARGETS)[0]
    assert sorted(adapter["target_modules"]) == sorted(expected)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert math.isfinite(summary["after"]["ref_perplexity"])


def test_an_architecture_that_cannot_work_gets_one_line(tmp_path, prompts_file, capsys):
    """An encoder-decoder (T5) and an encoder-only classifier (DistilBERT) are not causal LMs: one line, exit 2."""
    import transformers
    from conftest import build_classifier

    classifier = build_classifier(tmp_path / "clf", {0: "NEGATIVE", 1: "POSITIVE"})
    t5 = tmp_path / "t5"
    config = transformers.T5Config(d_model=16, d_ff=32, num_layers=1, num_heads=2, vocab_size=64)
    transformers.T5ForConditionalGeneration(config).save_pretrained(t5)
    for f in classifier.glob("*token*"):
        (t5 / f.name).write_bytes(f.read_bytes())
    for model_dir, words in ((classifier, "'distilbert'"), (t5, "encoder-decoder 't5'")):
        capsys.readouterr()  # what saving the models printed
        assert main(train_argv(model_dir, prompts_file, tmp_path / "run")) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and words in err and "decoder-only" in err, err
        assert not (tmp_path / "run").exists()
