"""Generation and the forward passes that score it: prompts → a typed :class:`Rollout` batch.

Shapes: B = rows (completions), P = prompt length (left-padded), T = response length (right-padded after EOS),
V = vocabulary. Masks are bool, True = real token. Every forward pass gets explicit position ids
``cumsum(mask) - 1`` so left padding never shifts a row's positions (DESIGN §3.2).
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace

import torch
from transformers import DynamicCache

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # pragma: no cover - a torch built without distributed: nothing is sharded
    FSDPModule = ()

try:
    from transformers.cache_utils import DynamicLayer  # transformers 5: caches made of per-layer objects
except ImportError:  # pragma: no cover - transformers 4.x
    DynamicLayer = None

from rlhflab.models.loading import causal_lm
from rlhflab.ops import entropy_from_logits, logprobs_from_hidden, logprobs_from_logits


@dataclass
class Rollout:
    """One batch of sampled completions and everything the update needs from the time they were sampled."""

    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) bool
    response_ids: torch.Tensor  # (B, T) pad after the first EOS
    response_mask: torch.Tensor  # (B, T) bool, up to and including the first EOS
    logprobs: torch.Tensor | None = None  # (B, T) policy at sampling time ("old" logprobs)
    ref_logprobs: torch.Tensor | None = None  # (B, T) reference model
    values: torch.Tensor | None = None  # (B, T) token critic, or (B, 1) sequence critic
    scores: torch.Tensor | None = None  # (B,) judge score
    advantages: torch.Tensor | None = None  # (B, T) or (B, 1)
    returns: torch.Tensor | None = None  # same shape as values
    truncated: torch.Tensor | None = None  # (B,) bool, no EOS within max_new_tokens; set = masked out of the loss

    @property
    def input_ids(self) -> torch.Tensor:  # (B, P + T)
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:  # (B, P + T) bool
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def loss_mask(self) -> torch.Tensor:  # (B, T) bool: the response tokens the policy loss sees
        return self.response_mask if self.truncated is None else self.response_mask & ~self.truncated[:, None]

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, index: torch.Tensor | slice) -> Rollout:
        """Rows ``index`` of every tensor field (for minibatches and micro-batches)."""
        return replace(
            self,
            **{f.name: getattr(self, f.name)[index] for f in fields(self) if getattr(self, f.name) is not None},
        )

    def chunks(self, size: int) -> Iterator[Rollout]:
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))


def keep_positions(start: int, stop: int, device: torch.device) -> torch.Tensor:
    """``logits_to_keep`` for positions ``start .. stop - 1``, as a tensor rather than a count: the LM head then
    multiplies a contiguous (B, n, H) copy. A count keeps a strided slice of the hidden states, which matmul runs
    as a bmm over B copies of the head's weight: with bf16 on a CPU, seconds of copying per pass at the
    Pythia-410m shape (2.3 s of a 3.5 s scoring pass of 8 rows; 5 s of the 16 rows' prefill)."""
    return torch.arange(start, stop, device=device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L) bool → (B, L) long: each row counts its own real tokens from 0; padding gets 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def is_eos(token_ids: torch.Tensor, eos_ids: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Elementwise: is the token one of the EOS ids (Llama-3 and Qwen2.5 instruct models end turns with several)."""
    if not isinstance(eos_ids, torch.Tensor):
        eos_ids = torch.as_tensor(eos_ids if isinstance(eos_ids, Sequence) else [eos_ids], device=token_ids.device)
    return torch.isin(token_ids, eos_ids)


def response_mask(response_ids: torch.Tensor, eos_ids: int | Sequence[int]) -> torch.Tensor:
    """(B, T) → (B, T) bool: True up to and including the first EOS (of any of ``eos_ids``); whatever follows it
    is masked.

    Computed from the first EOS only, never from the pad id: a tokenizer with pad = eos must not hide real EOS
    tokens, and tokens after the first EOS cannot matter whatever they are (DESIGN §3.1, §3.4).
    """
    ended = is_eos(response_ids, eos_ids).long()
    eos_before = ended.cumsum(-1) - ended  # (B, T) number of EOS strictly before t
    return eos_before == 0


@dataclass(frozen=True)
class PromptCodec:
    """How prompts become token ids and completions become text, for a tokenizer as it comes.

    ``eos_ids``: the tokenizer's EOS and every id of the model's ``generation_config.eos_token_id`` (a list for
    Llama-3 / Qwen2.5 instruct); generation stops at any, the response mask ends at the first of any.
    ``pad_id``: fills the left of short prompts and the tail after EOS; never attended to and never scored, so a
    tokenizer without a pad token pads with EOS rather than growing its vocabulary. ``bos_id``: prepended to every
    prompt when the tokenizer adds a BOS itself (Llama, Gemma: they degrade without it). ``chat_template``: each
    prompt is the user turn of the tokenizer's chat template with the generation prompt added; the reward still
    sees the plain prompt and completion text, never template tokens.
    """

    tokenizer: object
    eos_ids: tuple[int, ...]
    pad_id: int
    bos_id: int | None = None
    chat_template: bool = False

    @classmethod
    def for_tokenizer(
        cls, tokenizer, generation_eos: int | Sequence[int] | None = None, chat_template: bool = False
    ) -> PromptCodec:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        extra = (
            []
            if generation_eos is None
            else generation_eos
            if isinstance(generation_eos, Sequence)
            else [generation_eos]
        )
        eos_ids = tuple(dict.fromkeys([*eos, *extra]))  # the tokenizer's first, no repeats
        if not eos_ids:
            raise ValueError("the tokenizer has no EOS token and the generation config names none")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
        return cls(tokenizer, eos_ids, pad_id, adds_bos(tokenizer), chat_template)

    def encode(self, prompts: list[str], max_tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded (B, P) ids and bool mask. A long prompt keeps its last ``max_tokens`` tokens (the BOS and,
        with the chat template, the template's tokens around it come on top)."""
        tok = self.tokenizer
        rows = []
        for ids in tok(prompts, add_special_tokens=False)["input_ids"]:
            ids = ids[-max_tokens:]
            if self.chat_template:  # the (possibly cut) prompt as the user's turn
                text = tok.decode(ids)
                turn = tok.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
                )
                ids = tok(turn, add_special_tokens=False)["input_ids"]
            if self.bos_id is not None and (not ids or ids[0] != self.bos_id):
                ids = [self.bos_id, *ids]
            rows.append(ids)
        width = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, ids in enumerate(rows):
            if ids:
                input_ids[i, width - len(ids) :] = torch.tensor(ids)
                mask[i, width - len(ids) :] = True
        return input_ids.to(device), mask.to(device)

    def decode(self, response_ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Text of each response up to its EOS, special tokens left out."""
        return [
            self.tokenizer.decode(row[keep].tolist(), skip_special_tokens=True) for row, keep in zip(response_ids, mask)
        ]


def adds_bos(tokenizer) -> int | None:
    """The BOS id when the tokenizer puts one in front of a text by itself, else None."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return None
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bos if ids and ids[0] == bos and tokenizer("a", add_special_tokens=False)["input_ids"][:1] != [bos] else None


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Top-k / nucleus filtering of (B, V) logits; both off by default so sampling and scoring agree."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of (B, V) probabilities by inverse CDF. Exact like ``torch.multinomial``, but it draws B
    random numbers instead of B × V (at a 49k vocabulary 3 ms instead of 37 ms a step: docs/benchmarks.md)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device, dtype=probs.dtype)  # (B, 1) in [0, 1)
    return invert_cdf(probs, u)


def invert_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B,) the first token whose running sum of (B, V) ``probs`` exceeds ``u`` (B, 1) times the row's total."""
    cdf = probs.cumsum(-1)  # (B, V)
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # (B,)
    # u * total can round up to the total itself (or u = 1): past the end, take the most likely token instead
    return torch.where(token < probs.shape[-1], token, probs.argmax(-1))


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_ids: int | Sequence[int],
    pad_id: int,
    generator: torch.Generator,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_together: Callable[[bool], bool] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations with a KV cache; stop early once every row has produced an EOS (any of ``eos_ids``).

    ``stop_together`` (``Dist.all`` for a model sharded with FSDP) turns "all my rows ended" into "all rows of
    every process ended": a sharded forward is a collective, so every process must run as many passes.

    Returns ``(response_ids (B, T), sample_logprobs (B, T))`` with T <= max_new_tokens; positions after a row's
    EOS hold ``pad_id``. ``sample_logprobs`` are the logprobs of the sampled tokens under the sampling
    distribution (for checking that scoring reproduces it).
    """
    batch = prompt_ids.shape[0]
    attention = prompt_mask.long()  # (B, P) grows by one column per step
    positions = position_ids(prompt_mask)
    cache = {_cache_keyword(model): kv_cache(prompt_ids.shape[1] + max_new_tokens)}  # filled in place by every pass
    out = model(
        input_ids=prompt_ids,
        attention_mask=attention,
        position_ids=positions,
        **cache,
        use_cache=True,
        logits_to_keep=keep_positions(prompt_ids.shape[1] - 1, prompt_ids.shape[1], prompt_ids.device),
    )
    next_position = positions[:, -1:] + 1  # (B, 1)
    finished = torch.zeros(batch, dtype=torch.bool, device=prompt_ids.device)
    eos = torch.as_tensor(eos_ids if isinstance(eos_ids, Sequence) else [eos_ids], device=prompt_ids.device)
    tokens, logprobs = [], []
    waiting = False  # (stop_together) this process's rows have all ended; it runs passes for the others'
    for _ in range(max_new_tokens):
        logits = filter_logits(out.logits[:, -1].float() / temperature, top_k, top_p)  # (B, V)
        probs = logits.softmax(-1)
        if waiting:  # no draw: the generator stays where a process that stopped here leaves it (same stream)
            token = torch.full((batch,), pad_id, dtype=torch.long, device=prompt_ids.device)
        else:
            token = sample_categorical(probs, generator)  # (B,)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        logprobs.append(torch.log(probs.gather(-1, token[:, None]).squeeze(-1).clamp_min(1e-30)))
        tokens.append(token)
        still_real = ~finished  # this step's token is real (EOS included) for unfinished rows
        finished = finished | is_eos(token, eos)  # (B,)
        waiting = bool(finished.all())
        all_finished = waiting if stop_together is None else stop_together(waiting)
        if all_finished or len(tokens) == max_new_tokens:  # no pass for a token that will never be sampled
            break
        attention = torch.cat([attention, still_real.long()[:, None]], dim=1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_position,
            **cache,
            use_cache=True,
        )
        next_position = next_position + 1
    return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


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


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name goes in 5.40)."""
    base = causal_lm(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def backbone(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer under a causal LM's head (GPTNeoXModel etc.), through a PeftModel's wrappers: its forward
    returns hidden states, no logits."""
    return causal_lm(model).base_model


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
