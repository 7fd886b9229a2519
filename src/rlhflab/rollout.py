"""Prompts → a typed :class:`~rlhflab.batch.Rollout`: tokenising, sampling, decoding, and the scoring passes.

Shapes: B = rows (completions), P = prompt length (left-padded), T = response length (right-padded after EOS),
V = vocabulary. Masks are bool, True = real token. The forward passes themselves are :mod:`rlhflab.models.forward`.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import DynamicCache

from rlhflab.batch import Rollout
from rlhflab.config import Config
from rlhflab.fastpaths import kv_cache
from rlhflab.hooks import NO_HOOKS, LoopHooks
from rlhflab.models.forward import captured_hidden, keep_positions, position_ids, response_logprobs
from rlhflab.models.loading import causal_lm
from rlhflab.ops import masked_sum


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
    random numbers instead of B × V (an order of magnitude faster at a 49k vocabulary: docs/benchmarks.md)."""
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
    reserved_cache: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample continuations with a KV cache; stop early once every row has produced an EOS (any of ``eos_ids``).

    ``stop_together`` (``Dist.all`` for a model sharded with FSDP) turns "all my rows ended" into "all rows of
    every process ended": a sharded forward is a collective, so every process must run as many passes.
    ``reserved_cache``: :func:`rlhflab.fastpaths.kv_cache`; False = transformers' own ``DynamicCache``.

    Returns ``(response_ids (B, T), sample_logprobs (B, T))`` with T <= max_new_tokens; positions after a row's
    EOS hold ``pad_id``. ``sample_logprobs`` are the logprobs of the sampled tokens under the sampling
    distribution (for checking that scoring reproduces it).
    """
    batch = prompt_ids.shape[0]
    attention = prompt_mask.long()  # (B, P) grows by one column per step
    positions = position_ids(prompt_mask)
    capacity = prompt_ids.shape[1] + max_new_tokens
    cache = {_cache_keyword(model): kv_cache(capacity) if reserved_cache else DynamicCache()}  # filled by every pass
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


def _cache_keyword(model: torch.nn.Module) -> str:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache`` (the old name goes in 5.40)."""
    base = causal_lm(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


# ----------------------------------------------------------------------------------------------------------------
# a step's rollout


def tokenize_prompts(tokenizer, prompts: list[str], max_tokens: int, device: torch.device):
    """Left-padded (B, P) ids and bool mask of plain prompts (a BOS when the tokenizer adds one); long prompts keep
    their last ``max_tokens`` tokens. A run's prompts go through its :class:`PromptCodec` (``Setup.codec``)."""
    return PromptCodec.for_tokenizer(tokenizer).encode(prompts, max_tokens, device)


def sample_rollout(
    model,
    codec: PromptCodec,
    prompts: list[str],
    cfg: Config,
    generator: torch.Generator,
    device: torch.device,
    stop_together=None,
) -> tuple[Rollout, list[str]]:
    """Generate completions of ``prompts`` with ``model``; returns the rollout (ids, masks) and the texts.
    ``codec``: the run's :class:`PromptCodec` (a bare tokenizer gets the plain one: no chat template, its own EOS).
    ``stop_together``: ``Roles.stop_together`` (the joint early stop of a sharded model)."""
    codec = codec if isinstance(codec, PromptCodec) else PromptCodec.for_tokenizer(codec)
    prompt_ids, prompt_mask = codec.encode(prompts, cfg.data.max_prompt_tokens, device)
    r = cfg.rollout
    response_ids, _ = generate(
        model,
        prompt_ids,
        prompt_mask,
        r.max_new_tokens,
        codec.eos_ids,
        codec.pad_id,
        generator,
        r.temperature,
        r.top_k,
        r.top_p,
        stop_together,
        cfg.fast_paths.reserved_kv_cache,
    )
    mask = response_mask(response_ids, codec.eos_ids)  # (B, T)
    return Rollout(prompt_ids, prompt_mask, response_ids, mask), codec.decode(response_ids, mask)


@torch.no_grad()
def score_rollout(
    setup,
    rollout: Rollout,
    cfg: Config,
    with_values: bool = True,
    with_logprobs: bool = True,
    hooks: LoopHooks = NO_HOOKS,
) -> tuple[Rollout, float | None]:
    """Old logprobs, reference logprobs and values of a :class:`rlhflab.session.Setup`'s roles,
    ``train.scoring_batch_size`` rows per pass (with a plain LM head no logits exist; otherwise they are reduced
    ``train.micro_batch_size`` rows at a time); also the policy's mean token entropy. Without ``with_logprobs`` (see
    :attr:`rlhflab.algorithms.base.Algorithm.measures_old_logprobs`) the old logprobs and the entropy stay None.
    ``hooks`` see the ``logprobs``, ``ref_logprobs`` and ``values`` phases."""
    roles, temperature, head_rows = setup.roles, cfg.rollout.temperature, cfg.train.micro_batch_size
    # whole micro-batches per pass, reduced micro-batch by micro-batch: every reduction sees the shapes the update's
    # passes will, so old logprobs equal the first update's logprobs bit for bit (ratio = 1 exactly at step 0; in
    # bf16 on AMX the trunk's rounding also follows the rows per pass, and the ratio is 1 to bf16's precision).
    # Without with_logprobs the update measures the policy's side a micro-batch a pass, so the reference passes a
    # micro-batch at a time too: KL at step 1 is then exactly 0 in bf16 as well (tests/integration/test_bf16_kl.py)
    rows_per_pass = cfg.train.scoring_batch_size if with_logprobs else head_rows
    chunks = list(rollout.chunks(max(1, rows_per_pass // head_rows) * head_rows))
    # one role at a time: switching adapters walks every LoRA layer, so each role's passes run back to back
    values_from_policy = with_values and with_logprobs and roles.shared_trunk  # the policy pass gives the values
    from_reference = with_values and roles.critic_on_reference  # the reference pass gives the value head's states
    granularity = cfg.critic.granularity
    with hooks.phase("logprobs"):
        logprobs, entropy_sum, actor, values = [], 0.0, roles.actor(), []
        for chunk in chunks if with_logprobs else []:
            with captured_hidden(actor) if values_from_policy else contextlib.nullcontext() as hidden:
                lp, ent = response_logprobs(actor, chunk, temperature, with_entropy=True, rows_at_once=head_rows)
            logprobs.append(lp)
            entropy_sum += masked_sum(ent, chunk.response_mask).item()
            if values_from_policy:
                values.append(roles.values_from_hidden(hidden[-1], chunk, granularity))
        ref_logprobs, states = [], []
        with hooks.phase("ref_logprobs"), roles.reference_model() as reference:
            for chunk in chunks:
                with captured_hidden(reference) if from_reference else contextlib.nullcontext() as hidden:
                    ref_logprobs.append(response_logprobs(reference, chunk, temperature, rows_at_once=head_rows)[0])
                if from_reference:
                    states.append(roles.critic_states(hidden[-1], chunk, granularity))  # (b, T, H) | (b, 1, H)
        if from_reference:
            values = [roles.values_from_states(s) for s in states]
        elif with_values and not values_from_policy:
            with hooks.phase("values"):
                values = [roles.values(chunk, granularity) for chunk in chunks]
    return replace(
        rollout,
        logprobs=torch.cat(logprobs) if with_logprobs else None,
        ref_logprobs=torch.cat(ref_logprobs),
        values=torch.cat(values) if with_values else None,
        critic_states=torch.cat(states) if from_reference else None,
    ), entropy_sum / rollout.response_mask.sum().item() if with_logprobs else None
