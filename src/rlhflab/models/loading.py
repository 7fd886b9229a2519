"""Load tokenizers and models from a hub id or a local directory, through one code path.

A model a test saved with ``save_pretrained`` and ``EleutherAI/pythia-410m-deduped`` from the hub take the same
route. ``trust_remote_code`` stays off unless the caller asks for it; weights load through safetensors.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from rlhflab.errors import UserError

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → cuda when available, else cpu; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"model.device: {name!r} is not a device (use auto, cpu, cuda, cuda:N)") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.device: {name!r} asked for, but this torch build sees no CUDA device")
    return device


BF16_CPU_MIN_WIDTH = 512
"""A CPU with bf16 instructions runs bf16 faster from about this hidden size: SmolLM2-135M (576) and Pythia-410m
(1024) 1.7-2x; the demo model (128) 1.15x slower, its matrices too small to win back the casts (docs/benchmarks.md)."""


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (x86 AVX512-BF16 or AMX, read from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device, hidden_size: int | None = None) -> torch.dtype:
    """'auto' → bf16 on a GPU that supports it, and on a CPU with bf16 instructions for a model of
    ``hidden_size`` >= ``BF16_CPU_MIN_WIDTH`` (what measured faster there at equal results); else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        wide = hidden_size is not None and hidden_size >= BF16_CPU_MIN_WIDTH
        return torch.bfloat16 if device.type == "cpu" and wide and cpu_has_bf16() else torch.float32
    if name not in DTYPES:
        raise UserError(f"model.dtype: {name!r} is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def hidden_size(name: str, trust_remote_code: bool = False) -> int | None:
    """The model's width from its config (None when the config cannot be read: loading it reports why)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return None
    config = getattr(config, "text_config", None) or config
    return getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)


def _check_source(name: str, key: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserError(f"{key}: local model directory {name!r} does not exist")


def _load_error(name: str, key: str, err: Exception) -> UserError:
    return UserError(
        f"{key}: cannot load {name!r} as a local directory or a Hugging Face hub id "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    )


def load_tokenizer(name: str, trust_remote_code: bool = False, key: str = "model.name") -> PreTrainedTokenizerBase:
    """Left-padding tokenizer whose pad token is *not* EOS whenever the vocabulary allows it.

    Pythia's saved tokenizers often set ``pad_token = eos_token``; we switch to ``<|padding|>`` when it exists.
    Masks never come from comparing ids with the pad id anyway (DESIGN §3.1), so a pad = eos tokenizer without a
    separate pad token still trains correctly.
    """
    _check_source(name, key)
    try:
        tok = AutoTokenizer.from_pretrained(
            str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        raise _load_error(name, key, err) from err
    tok.padding_side = "left"
    if tok.pad_token is None or tok.pad_token_id == tok.eos_token_id:
        vocab = tok.get_vocab()
        if "<|padding|>" in vocab:
            tok.pad_token = "<|padding|>"
        elif tok.pad_token is None:
            tok.pad_token = tok.eos_token  # harmless: masks are explicit, see above
    return tok


def load_causal_lm(
    name: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    trust_remote_code: bool = False,
    key: str = "model.name",
) -> torch.nn.Module:
    """``AutoModelForCausalLM`` from a hub id or a local directory, in ``dtype`` on ``device``, eval mode."""
    _check_source(name, key)
    path = str(Path(name).expanduser()) if Path(name).expanduser().is_dir() else name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except (OSError, ValueError) as err:
        if "Unrecognized configuration class" in str(err):  # the config loaded: the architecture is the problem
            raise UserError(
                f"{key}: {name!r} is a {_model_type(path)} model, for which transformers has no causal LM "
                "(AutoModelForCausalLM); rlhflab trains decoder-only models (GPT-NeoX, Llama, Qwen, GPT-2, ...)"
            ) from None
        raise _load_error(name, key, err) from err
    return model.to(device).eval()


def _model_type(path: str) -> str:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    kind = "encoder-decoder " if getattr(config, "is_encoder_decoder", False) else ""
    return f"{kind}{config.model_type!r} ({type(config).__name__})"


def merge_adapter(base: torch.nn.Module, adapter: str, key: str = "model.sft_adapter") -> torch.nn.Module:
    """Fold a PEFT LoRA adapter (hub id or local dir) into ``base``'s weights and return the plain model.

    Used for an SFT stage before RL: the merged model is then both the policy's starting point and the reference."""
    from peft import PeftModel

    _check_source(adapter, key)
    path = str(Path(adapter).expanduser()) if Path(adapter).expanduser().is_dir() else adapter
    try:
        merged = PeftModel.from_pretrained(base, path).merge_and_unload()
    except (OSError, ValueError) as err:
        raise _load_error(adapter, key, err) from err
    return merged.eval()


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face causal LM itself: a PeftModel's base model (its LoRA layers injected), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a causal LM's head (GPTNeoXModel etc.), through a PeftModel's wrappers: its forward
    returns hidden states, no logits."""
    return causal_lm(model).base_model


def transformer_blocks(model: torch.nn.Module, key: str) -> list[torch.nn.Module]:
    """The model's transformer blocks: instances of the classes it names in ``_no_split_modules`` (Hugging Face
    models do). ``key`` is the config option that needs them, for the error when a model names none."""
    base = causal_lm(model)
    names = set(getattr(base, "_no_split_modules", None) or [])
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if not blocks:
        raise UserError(
            f"{key}: {type(base).__name__} names no transformer block classes (_no_split_modules), so rlhflab "
            f"cannot find its blocks; train it without {key}"
        )
    return blocks


_ATTENTION_OUTPUTS = {"o_proj", "dense", "out_proj", "c_proj", "o", "wo"}
"""Names of an attention module's output projection (Llama, GPT-NeoX/Phi, OPT, GPT-2, T5-style): ``auto`` gives
the critic the attention's other projections, those that read its input (query, key, value)."""


def linear_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Qualified name → every dense layer LoRA can adapt (``nn.Linear`` and GPT-2's ``Conv1D``), LM head excluded."""
    from transformers.pytorch_utils import Conv1D

    base = causal_lm(model)
    head = base.get_output_embeddings()
    return {
        name: module
        for name, module in base.named_modules()
        if isinstance(module, (torch.nn.Linear, Conv1D)) and module is not head
    }


def lora_targets(model: torch.nn.Module, targets: list[str] | str, key: str, role: str = "policy") -> list[str]:
    """The ``target_modules`` for peft: a list as given (each entry must match a linear layer), or for ``auto``
    the linear layers of the decoder blocks (peft's ``all-linear`` without what lies outside the blocks, such as
    OPT's ``project_in``/``project_out``) for the policy, and the attention's input projections for the critic.
    Leaf names when they pick exactly those layers (``q_proj``, ...), else qualified names."""
    linears = linear_layers(model)
    leaf = {name: name.rsplit(".", 1)[-1] for name in linears}
    if targets != "auto":
        unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linears)]
        if unmatched:
            raise UserError(
                f"{key}: {unmatched} match no linear layer of {type(causal_lm(model)).__name__}; its linear layers "
                f"are {sorted(set(leaf.values()))} (or use auto)"
            )
        return list(targets)
    try:
        blocks = transformer_blocks(model, key)
    except UserError:  # no block classes named: every linear layer but the LM head
        blocks = [causal_lm(model)]
    linear_ids = {id(m) for m in linears.values()}
    chosen = {id(m) for block in blocks for m in block.modules() if id(m) in linear_ids}
    if role == "critic":
        attention = [m for b in blocks for m in b.modules() if "Attention" in type(m).__name__]
        inner = {id(m): n.rsplit(".", 1)[-1] for a in attention for n, m in a.named_modules() if id(m) in chosen}
        inputs = {i for i, name in inner.items() if name not in _ATTENTION_OUTPUTS}
        chosen = inputs or set(inner) or chosen
    picked = [name for name, module in linears.items() if id(module) in chosen]
    if not picked:
        raise UserError(f"{key}: auto found no linear layer in {type(causal_lm(model)).__name__}'s blocks; name them")
    names = sorted({leaf[n] for n in picked}, key=[leaf[n] for n in picked].index)
    same = {n for n in linears if leaf[n] in names} == set(picked)
    return names if same else picked


def lora_config(r: int, alpha: int, dropout: float, targets: list[str], bias: str = "none"):
    """peft's ``LoraConfig`` of a causal-LM adapter: the policy's, the critic's, or SFT's."""
    from peft import LoraConfig

    return LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        bias=bias,
        task_type="CAUSAL_LM",
    )


def compile_blocks(model: torch.nn.Module) -> None:
    """``torch.compile`` each transformer block's forward in the passes without a KV cache (scoring and update).
    Regional compilation: the blocks run the same code, so one compiled graph serves all of them (recompiled per
    active adapter and for grad / no-grad); shapes are dynamic (prompt and response lengths vary). Generation stays
    eager: inductor fails on the KV cache's in-place writes, and one token per pass leaves little to fuse. Same
    numbers up to floating-point reassociation by the fused kernels."""
    blocks = transformer_blocks(model, "train.compile")
    if next(model.parameters()).device.type == "cpu":  # inductor writes C++ for the CPU and builds it with $CXX
        compiler = os.environ.get("CXX") or ("clang++" if sys.platform == "darwin" else "g++")
        if shutil.which(compiler) is None:
            raise UserError(
                f"train.compile: torch.compile needs a C++ compiler on a CPU and {compiler!r} is not on PATH "
                "(install one, point $CXX at it, or turn train.compile off)"
            )
    for block in blocks:
        block.forward = _compiled_unless_cached(block.forward)


def _compiled_unless_cached(eager: Callable) -> Callable:
    from transformers.cache_utils import Cache

    compiled = torch.compile(eager, dynamic=True)

    def forward(*args, **kwargs):  # a pass with a KV cache: generation (whatever the model calls the argument)
        cached = kwargs.get("use_cache") or any(isinstance(value, Cache) for value in (*args, *kwargs.values()))
        return (eager if cached else compiled)(*args, **kwargs)

    return forward


def checkpoint_activations(model: torch.nn.Module, mode: str) -> None:
    """Activation checkpointing of each transformer block in the passes with gradients. ``full``: the block keeps
    only its inputs and recomputes everything in backward (one more forward per block; the saved activations of a
    micro-batch shrink to one hidden state per block). ``selective``: it also keeps the outputs of its matrix
    products and attention (:func:`keep_products`), and backward recomputes only what is cheap (norms, activation
    functions, rotary embeddings, LoRA's rank-r up-projections). Same numbers either way: the recomputation is the
    same computation."""
    assert mode in ("selective", "full"), mode  # "none" never wraps the blocks
    context_fn = _keep_products_contexts if mode == "selective" else torch.utils.checkpoint.noop_context_fn
    for block in transformer_blocks(model, "train.activation_checkpointing"):

        def forward(*args, _forward=block.forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return torch.utils.checkpoint.checkpoint(
                _forward, *args, use_reentrant=False, context_fn=context_fn, **kwargs
            )

        block.forward = forward


_PRODUCTS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
_ATTENTION = {
    getattr(torch.ops.aten, name).default
    for name in (
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(torch.ops.aten, name)
}
MIN_KEPT_INNER_DIM = 64
"""A product's output is kept when its inner dimension K exceeds this: each kept float spares 2·K FLOPs of
recomputation. LoRA's up-projection (K = r <= 64) is recomputed, the model's own projections are kept."""


def keep_products(ctx, op, *args, **kwargs) -> torch.utils.checkpoint.CheckpointPolicy:
    """Policy of ``selective`` checkpointing, asked for each operator the block runs: keep the outputs of
    attention and of matrix products over a long inner dimension, recompute everything else."""
    policy = torch.utils.checkpoint.CheckpointPolicy
    if op in _ATTENTION:
        return policy.MUST_SAVE
    if op in _PRODUCTS:
        left = args[1] if op is torch.ops.aten.addmm.default else args[0]  # addmm(bias, left, right)
        return policy.MUST_SAVE if left.shape[-1] > MIN_KEPT_INNER_DIM else policy.PREFER_RECOMPUTE
    return policy.PREFER_RECOMPUTE


def _keep_products_contexts():
    return torch.utils.checkpoint.create_selective_checkpoint_contexts(keep_products)
