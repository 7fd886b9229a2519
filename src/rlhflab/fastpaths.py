"""The fast paths, in one place: each computes what the plain path computes (tests/unit/test_rollout.py checks
each against it) with less memory or time, and each can be turned off (``fast_paths.*`` in the config).

- :func:`add_lora_in_place`: LoRA layers add their update into the base layer's output in place (bit-identical).
- :func:`kv_cache`: generation's KV cache reserves each layer's room at its first write (the same tokens).
- :func:`plain_lm_head`: where it finds a plain frozen LM head, log-probs come from the hidden states
  (:func:`rlhflab.ops.logprobs_from_hidden`) and no (B, T, V) logits exist (equal within float rounding).
"""

from __future__ import annotations

import functools
import types
import weakref

import torch
from peft.tuners.lora import Linear as LoraLinear
from transformers import DynamicCache

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - a torch built without distributed: nothing is sharded
    FSDPModule = ()

try:
    from transformers.cache_utils import DynamicLayer  # transformers 5: caches made of per-layer objects
except ImportError:  # pragma: no cover - transformers 4.x
    DynamicLayer = None

from rlhflab.models.loading import backbone, causal_lm

# ----------------------------------------------------------------------------------------------------------------
# LoRA in place


def add_lora_in_place(model: torch.nn.Module) -> None:
    """Make ``model``'s LoRA linear layers add their update into the base layer's output in place.

    peft computes ``result = result + lora_B(lora_A(dropout(x))) * scaling``: a scaled copy and a new sum, two
    (tokens, out_features) tensors per adapted layer, each freed a moment later. In the update's forward they end up
    as freed blocks between the activations kept for the backward, which glibc keeps resident (docs/benchmarks.md,
    "What was made faster"). ``result.add_(lora_B(...).mul_(scaling))`` does the same two roundings
    in the same order, so the numbers are bit-identical; autograd needs neither tensor (a linear layer keeps its input,
    a sum and a product by a number keep nothing). DoRA and other variants, several active adapters (peft sums them in
    the wider dtype before rounding), mixed-adapter batches (``adapter_names``) and merged or disabled adapters keep
    peft's own forward.

    Not with ``selective`` activation checkpointing: it keeps the base product's output for the backward, and
    an in-place add would overwrite it."""
    for module in model.modules():
        if type(module) is LoraLinear:  # exactly peft's dense layer, not its quantised subclasses
            # a bound method (not a closure): copy.deepcopy rebinds it to the copied layer
            module.forward = types.MethodType(_lora_forward_in_place, module)


def _lora_forward_in_place(self: LoraLinear, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    active = [name for name in self.active_adapters if name in self.lora_A]
    if len(active) != 1 or args or kwargs or self.disable_adapters or self.merged or active[0] in self.lora_variant:
        return LoraLinear.forward(self, x, *args, **kwargs)
    lora_A, lora_B = self.lora_A[active[0]], self.lora_B[active[0]]
    result = self.base_layer(x)  # (..., out_features)
    update = lora_B(lora_A(self.lora_dropout[active[0]](self._cast_input_dtype(x, lora_A.weight.dtype))))
    return result.add_(update.mul_(self.scaling[active[0]]))  # a bf16 result adds an fp32 update and rounds once


# ----------------------------------------------------------------------------------------------------------------
# the reserved KV cache


def kv_cache(capacity: int) -> DynamicCache:
    """A KV cache whose layers reserve room for ``capacity`` positions at their first write. The default layer
    concatenates each new position onto a fresh copy of everything cached so far: quadratic copying, and a heap
    of ever-larger freed blocks that keeps the process's memory high. Plain ``DynamicCache`` on transformers
    versions without per-layer cache classes."""
    cache = DynamicCache()
    if DynamicLayer is not None and hasattr(cache, "layer_class_to_replicate"):
        cache.layer_class_to_replicate = functools.partial(_ReservedLayer, capacity)
    return cache


if DynamicLayer is not None:

    class _ReservedLayer(DynamicLayer):
        """One layer of :func:`kv_cache`: keys and values are views of the filled part of fixed buffers."""

        def __init__(self, capacity: int):
            super().__init__()
            self.capacity = capacity

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:  # (B, heads, capacity, head_dim) buffers
                self.lazy_initialization(key_states, value_states)
                size = (*key_states.shape[:2], self.capacity)
                self.key_buffer = key_states.new_empty(*size, key_states.shape[-1])
                self.value_buffer = value_states.new_empty(*size, value_states.shape[-1])
            start = self.get_seq_length()
            end = start + key_states.shape[-2]
            assert end <= self.capacity, f"KV cache reserved {self.capacity} positions, got {end}"
            self.key_buffer[:, :, start:end] = key_states
            self.value_buffer[:, :, start:end] = value_states
            self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
            return self.keys, self.values


# ----------------------------------------------------------------------------------------------------------------
# log-probs from the hidden states


_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier_scale")
"""Config fields through which some architectures (Gemma 2/3, Cohere, Granite, ...) transform head(hidden); any
value but None or 1 rules out the hidden-state path even where the probe cannot tell (e.g. caps at small logits)."""
_HEAD_IS_LAST_STEP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # causal LM → bool, probed once


def plain_lm_head(model: torch.nn.Module) -> torch.nn.Linear | None:
    """The LM head when the model's logits are exactly ``head(backbone(...).last_hidden_state)``, else None.

    Then :func:`response_logprobs` takes log-probs from the hidden states (:func:`rlhflab.ops.logprobs_from_hidden`)
    and no (B, T, V) logits exist. None, and the usual logits path, for: a head that is not a frozen
    ``nn.Linear`` (an adapter or training on the head), a config that caps or scales logits, a model sharded with
    FSDP (its root gathers the head only inside its own forward), or logits that differ from ``head(hidden)`` on
    a 4-token probe (checked once per model, bit for bit).
    """
    if isinstance(model, FSDPModule):
        return None
    base = causal_lm(model)
    head = base.get_output_embeddings()
    if type(head) is not torch.nn.Linear or any(p.requires_grad for p in head.parameters()):
        return None
    if any(getattr(base.config, name, None) not in (None, 1.0) for name in _LOGIT_TRANSFORMS):
        return None
    if base not in _HEAD_IS_LAST_STEP:
        ids = torch.arange(1, 5, device=head.weight.device)[None] % head.weight.shape[0]  # (1, 4)
        training = base.training
        base.eval()  # no dropout noise between the two passes
        with torch.no_grad():
            logits = base(input_ids=ids, use_cache=False).logits
            _HEAD_IS_LAST_STEP[base] = torch.equal(logits, head(backbone(base)(input_ids=ids).last_hidden_state))
        base.train(training)
    return head if _HEAD_IS_LAST_STEP[base] else None


def use_logits_path(model: torch.nn.Module) -> None:
    """Turn the hidden-state log-probs off for ``model`` (``fast_paths.hidden_logprobs: false``): every later
    :func:`plain_lm_head` of it is None, so its log-probs come from (B, T, V) logits."""
    _HEAD_IS_LAST_STEP[causal_lm(model)] = False
