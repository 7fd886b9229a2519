"""Tiny random-weight models of the decoder-only families users bring, each saved like a hub checkpoint (config,
safetensors, tokenizer, generation config), with tokenizers that follow each family's conventions.

Tokenizer conventions (the traps they set):
- ``neox``: Pythia's: EOS ``<|endoftext|>``, a separate ``<|padding|>``.
- ``gpt2``: EOS = BOS ``<|endoftext|>``, no pad token.
- ``llama``: BOS ``<s>`` added to every text by the tokenizer, EOS ``</s>``, no pad token.
- ``gemma``: BOS ``<bos>`` added, EOS ``<eos>``, pad ``<pad>``.
- ``qwen``: pad ``<|endoftext|>``, EOS ``<|im_end|>``; the generation config ends at either (a list), a chat template.
- ``smollm``: pad = EOS = ``<|im_end|>``, BOS ``<|im_start|>`` not added, a chat template (SmolLM2-Instruct's).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from conftest import TEXTS  # the test tokenizers' training texts
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GenerationConfig, PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# specials in id order, then the token roles (bos, eos, pad; None = the tokenizer has none), whether BOS is added
TOKENIZERS = {
    "neox": (["<|endoftext|>", "<|padding|>"], ("<|endoftext|>", "<|endoftext|>", "<|padding|>"), False),
    "gpt2": (["<|endoftext|>"], ("<|endoftext|>", "<|endoftext|>", None), False),
    "llama": (["<unk>", "<s>", "</s>"], ("<s>", "</s>", None), True),
    "gemma": (["<pad>", "<eos>", "<bos>", "<unk>"], ("<bos>", "<eos>", "<pad>"), True),
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], (None, "<|im_end|>", "<|endoftext|>"), False),
    "smollm": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], ("<|im_start|>", "<|im_end|>", "<|im_end|>"), False),
}


def family_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    specials, (bos, eos, pad), add_bos = TOKENIZERS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=specials[0] if kind == "llama" else None,
        model_max_length=128,
        clean_up_tokenization_spaces=False,
    )
    if kind in ("qwen", "smollm"):
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _llama_like(**extra) -> dict:
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return {**base, **extra}


# family → (config class, config fields, tokenizer kind)
FAMILIES = {
    "gpt_neox": (
        "GPTNeoXConfig",
        dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4),
        "neox",
    ),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=2, n_head=4, n_positions=128), "gpt2"),
    "llama": ("LlamaConfig", _llama_like(), "llama"),
    "mistral": ("MistralConfig", _llama_like(sliding_window=4), "llama"),
    "qwen2": ("Qwen2Config", _llama_like(tie_word_embeddings=True), "qwen"),
    "qwen3": ("Qwen3Config", _llama_like(head_dim=8, tie_word_embeddings=True), "qwen"),
    "opt": (  # OPT-350m's shape: the blocks are wider than the embeddings (project_in / project_out)
        "OPTConfig",
        dict(
            hidden_size=32,
            word_embed_proj_dim=16,
            ffn_dim=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            do_layer_norm_before=False,
        ),
        "gpt2",
    ),
    "phi": ("PhiConfig", _llama_like(num_key_value_heads=4, partial_rotary_factor=0.5), "gpt2"),  # LM head bias
    "phi3": ("Phi3Config", _llama_like(), "llama"),
    "gemma": ("GemmaConfig", _llama_like(num_key_value_heads=1, head_dim=8), "gemma"),
    "gemma2": (  # final logit soft-capping
        "Gemma2Config",
        _llama_like(head_dim=8, sliding_window=4, final_logit_softcapping=30.0, query_pre_attn_scalar=8),
        "gemma",
    ),
    "gemma3": ("Gemma3TextConfig", _llama_like(head_dim=8, sliding_window=4, query_pre_attn_scalar=8), "gemma"),
    "smollm": ("LlamaConfig", _llama_like(tie_word_embeddings=True), "smollm"),
}


def build_family_dir(path: Path, family: str, seed: int = 0, **fields_override) -> Path:
    """Save a tiny random model of ``family`` (config fields changed by ``fields_override``) and its tokenizer into
    ``path``; returns ``path``."""
    config_name, fields, kind = FAMILIES[family]
    fields = {**fields, **fields_override}
    tokenizer = family_tokenizer(kind)
    ids = {
        role: tokenizer.convert_tokens_to_ids(t) if t else None
        for role, t in zip(("bos", "eos", "pad"), TOKENIZERS[kind][1])
    }
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
        **fields,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = transformers.AutoModelForCausalLM.from_config(config).eval()
    if family == "phi":  # a head bias that is not zero, so that leaving it out would show
        torch.nn.init.normal_(model.lm_head.bias, std=0.5)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    eos = [ids["eos"], tokenizer.convert_tokens_to_ids("<|endoftext|>")] if kind == "qwen" else ids["eos"]
    GenerationConfig(bos_token_id=ids["bos"], eos_token_id=eos, pad_token_id=ids["pad"]).save_pretrained(path)
    return path
