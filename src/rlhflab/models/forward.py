"""The forward passes that score a batch: position ids, the logits or hidden states that predict each response
token, and their log-probs. Every pass gets explicit position ids ``cumsum(mask) - 1`` so left padding never shifts a
row's positions (DESIGN §3.2).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from rlhflab.batch import Rollout
from rlhflab.fastpaths import plain_lm_head
from rlhflab.models.loading import backbone
from rlhflab.ops import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits

HeadHook = Callable[[torch.Tensor, torch.Tensor], None]
_HEAD_HOOKS: list[HeadHook] = []


def register_head_hook(hook: HeadHook) -> Callable[[], None]:
    """Call ``hook(hidden (B, T, H), head weight (V, H))`` before every hidden-state log-prob product: that path
    multiplies the LM head's weight without calling the head, so the head's own forward hooks never see it
    (``rlhflab bench`` counts its FLOPs here). Returns the function that removes the hook."""
    _HEAD_HOOKS.append(hook)
    return lambda: _HEAD_HOOKS.remove(hook)


def keep_positions(start: int, stop: int, device: torch.device) -> torch.Tensor:
    """``logits_to_keep`` for positions ``start .. stop - 1``, as a tensor rather than a count: the LM head then
    multiplies a contiguous (B, n, H) copy. A count keeps a strided slice of the hidden states, which matmul runs
    as a bmm over B copies of the head's weight: with bf16 on a CPU, seconds of copying per pass at the
    Pythia-410m shape (docs/benchmarks.md)."""
    return torch.arange(start, stop, device=device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool → (B, L) long: each row counts its own real tokens from 0; padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@contextlib.contextmanager
def captured_hidden(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """Inside the block, every forward of ``model``'s backbone appends its last hidden state (B, L, H) to the list
    yielded: what a value head on the policy's own trunk reads (``critic.backbone: shared``), from the same pass that
    gives the log-probs, with either log-prob path (hidden states or logits)."""
    captured: list[torch.Tensor] = []
    handle = backbone(model).register_forward_hook(lambda _module, _args, out: captured.append(out[0]))
    try:
        yield captured
    finally:
        handle.remove()


def response_hidden(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """(B, T, H) last hidden states at the positions that predict each response token (P - 1 + t predicts t)."""
    mask = rollout.attention_mask
    prompt_len, response_len = rollout.prompt_ids.shape[1], rollout.response_ids.shape[1]
    hidden = backbone(model)(
        input_ids=rollout.input_ids, attention_mask=mask.long(), position_ids=position_ids(mask), use_cache=False
    ).last_hidden_state  # (B, P + T, H)
    return hidden[:, prompt_len - 1 : prompt_len - 1 + response_len]


def forward_logits(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """(B, T, V) logits that predict each response token (only the T positions needed are projected)."""
    mask = rollout.attention_mask
    length, response_len = mask.shape[1], rollout.response_ids.shape[1]
    out = model(
        input_ids=rollout.input_ids,
        attention_mask=mask.long(),
        position_ids=position_ids(mask),
        logits_to_keep=keep_positions(length - response_len - 1, length - 1, mask.device),  # P-1+t predicts t
        use_cache=False,  # no KV cache to build (and to write twice under activation checkpointing)
    )
    return out.logits


def response_logprobs(
    model: torch.nn.Module,
    rollout: Rollout,
    temperature: float,
    with_entropy: bool = False,
    rows_at_once: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logprobs (B, T) of the response tokens under ``model`` at the sampling temperature (+ entropy (B, T)).

    With a plain LM head (:func:`plain_lm_head`, e.g. every GPT-NeoX, GPT-2 or Llama) the logits are never
    materialised: hidden states go through :func:`rlhflab.ops.logprobs_from_hidden`, vocabulary block by block.
    Otherwise the whole batch's logits come from one pass and ``rows_at_once`` bounds the (rows, T, V) temporaries
    of the log-softmax and entropy (same numbers, row by row).
    The entropy is a metric: computed without gradients, it keeps nothing for a backward."""
    head = plain_lm_head(model)
    if head is not None:
        hidden = response_hidden(model, rollout)
        for hook in _HEAD_HOOKS:
            hook(hidden, head.weight)
        return logprobs_from_hidden(hidden, head.weight, head.bias, rollout.response_ids, temperature, with_entropy)
    logits = forward_logits(model, rollout)  # (B, T, V)
    rows = rows_at_once or len(rollout)
    logprobs, entropy = [], []
    for start in range(0, len(rollout), rows):
        part = logits[start : start + rows]  # (b, T, V)
        logprobs.append(logprobs_from_logits(part, rollout.response_ids[start : start + rows], temperature))
        if with_entropy:
            with torch.no_grad():
                entropy.append(entropy_from_logits(part, temperature))
    return torch.cat(logprobs), torch.cat(entropy) if with_entropy else None
