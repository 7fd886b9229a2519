"""The training loop: rollout → judge → score → advantages → K epochs × M minibatches → log, checkpoint.

Reads top to bottom; the math is in :mod:`rlhflab.ops` and :mod:`rlhflab.algorithms`.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from rlhflab import distributed
from rlhflab.algorithms.group import group_advantages, group_micro_step
from rlhflab.algorithms.kl_control import KLController
from rlhflab.algorithms.ppo import ppo_advantages, ppo_micro_step
from rlhflab.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rlhflab.config import Config, save_config
from rlhflab.data.prompts import PromptSampler, read_prompts
from rlhflab.distributed import SINGLE, Dist
from rlhflab.errors import UserError
from rlhflab.models.loading import (
    hidden_size,
    load_causal_lm,
    load_tokenizer,
    merge_adapter,
    resolve_device,
    resolve_dtype,
)
from rlhflab.models.roles import Roles
from rlhflab.ops import kl_penalty, masked_sum
from rlhflab.outdir import check_output_dir, is_run_dir
from rlhflab.rewards import CompositeReward, build_reward
from rlhflab.rewards.base import missing_eos_penalty
from rlhflab.rollout import PromptCodec, Rollout, generate, is_eos, response_logprobs, response_mask
from rlhflab.schedule import build_scheduler
from rlhflab.tracking import Trackers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class Setup:
    """Everything loaded before the first step."""

    tokenizer: object
    codec: PromptCodec  # prompts → ids (BOS, chat template), EOS ids, pad id
    roles: Roles
    reward: CompositeReward
    train_prompts: list[str]
    eval_prompts: list[str]
    device: torch.device


def resolve_sources(cfg: Config) -> tuple[str, str | None, str | None]:
    """(model directory or hub id, train prompts file, eval prompts file); 'demo' builds the offline assets,
    'smollm2-135m' fetches and converts SmolLM2-135M-Instruct (first use)."""
    model_name, train_file, eval_file = cfg.model.name, cfg.data.prompts_file, cfg.data.eval_prompts_file
    if model_name == "demo":
        from rlhflab.models.tiny import ensure_demo_assets

        model_name = str(ensure_demo_assets().model_dir)
    if cfg.data.source == "demo":  # the same files as the demo model's build, without training a model
        from rlhflab.data.demo import ensure_demo_data

        data = ensure_demo_data()
        train_file = train_file or str(data.train_prompts_file)
        eval_file = eval_file or str(data.eval_prompts_file)
    from rlhflab.models.smollm2 import resolve_model_name

    return resolve_model_name(model_name), train_file, eval_file


def held_out_prompts(cfg: Config, train_prompts: list[str], eval_file: str | None) -> list[str]:
    """eval.prompts, then data.eval_prompts_file's or (imdb) data.eval_dataset_split's openings; without any, the
    first training prompts show the change. A prompt listed twice is evaluated once (× eval.samples_per_prompt)."""
    if eval_file:
        prompts = cfg.eval.prompts + read_prompts(eval_file, "data.eval_prompts_file")
    elif cfg.data.source == "imdb" and cfg.data.eval_dataset_split:
        from rlhflab.data.imdb import imdb_prompts

        prompts = cfg.eval.prompts + imdb_prompts(cfg.data.eval_dataset_split, cfg.data.prompt_words)
    else:
        prompts = cfg.eval.prompts or train_prompts[:16]
    return list(dict.fromkeys(prompts))


def load_setup(cfg: Config, with_critic: bool | None = None, dist: Dist = SINGLE) -> Setup:
    """Tokenizer, roles and prompts; the critic exists only for PPO unless ``with_critic`` says otherwise.

    Under torchrun (``dist``) every process loads the same; a CUDA device becomes ``cuda:LOCAL_RANK``. With
    ``distributed.fsdp`` the base is loaded in CPU memory and then sharded, each process's shards on its device."""
    model_name, train_file, eval_file = resolve_sources(cfg)
    # prompts first: a bad prompts file fails in a second, before a large model is loaded
    if cfg.data.source == "imdb":
        from rlhflab.data.imdb import imdb_prompts

        train_prompts = imdb_prompts(cfg.data.dataset_split, cfg.data.prompt_words)
    else:
        train_prompts = read_prompts(train_file)
    eval_prompts = held_out_prompts(cfg, train_prompts, eval_file)
    reward = build_reward(cfg.reward, cfg.model.trust_remote_code)  # a bad judge fails before the model loads
    device = dist.device(resolve_device(cfg.model.device))
    width = hidden_size(model_name, cfg.model.trust_remote_code) if cfg.model.dtype == "auto" else None
    dtype = resolve_dtype(cfg.model.dtype, device, width)
    tokenizer = load_tokenizer(model_name, cfg.model.trust_remote_code)
    fsdp = cfg.distributed.fsdp and dist.enabled  # a whole base may not fit the device: shard it from CPU memory
    load_device = torch.device("cpu") if fsdp else device
    base = load_causal_lm(model_name, dtype, load_device, cfg.model.trust_remote_code)
    if cfg.model.sft_adapter:
        base = merge_adapter(base, cfg.model.sft_adapter)
    base.requires_grad_(False)
    codec = prompt_codec(tokenizer, base, cfg, announce=dist.is_main)
    roles = Roles(base, cfg, with_critic=cfg.algorithm.name == "ppo" if with_critic is None else with_critic)
    for role, key, asked in (("policy", "lora", cfg.lora), ("critic", "critic", cfg.critic)):
        if asked.target_modules == "auto" and roles.targets[role] and dist.is_main:
            print(f"{key}.target_modules auto: {', '.join(roles.targets[role])}")
    if fsdp:
        roles.shard(dist, device)
    return Setup(tokenizer, codec, roles, reward, train_prompts, eval_prompts[: cfg.eval.max_prompts], device)


def prompt_codec(tokenizer, model: torch.nn.Module, cfg: Config, announce: bool = True) -> PromptCodec:
    """The run's :class:`PromptCodec`: EOS ids from the tokenizer and the model's generation config, and the chat
    template per ``data.chat_template``. ``auto`` wraps prompts in the template only for a tokenizer that has one and
    prompts of your own (``data.source: file``): the demo's and IMDB's prompts are openings to continue."""
    mode = cfg.data.chat_template
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "on" and not has_template:
        raise UserError(f"data.chat_template: 'on', but the tokenizer of {cfg.model.name!r} has no chat template")
    chat = mode == "on" or (mode == "auto" and has_template and cfg.data.source == "file")
    if announce and mode == "auto" and has_template:
        print(
            f"data.chat_template auto: {'on' if chat else 'off'} (the tokenizer has a chat template; prompts "
            f"from data.source {cfg.data.source!r}{' are instructions' if chat else ' are openings to continue'})"
        )
    generation = getattr(model, "generation_config", None)
    try:
        return PromptCodec.for_tokenizer(tokenizer, getattr(generation, "eos_token_id", None), chat)
    except ValueError as err:
        raise UserError(f"model.name: {cfg.model.name!r}: {err}; rlhflab needs one to end completions") from None


def check_run_dir(cfg: Config, overwrite: bool) -> Path:
    """Refuse an output directory that already holds a run, unless told to overwrite it, and any other non-empty
    directory (see :mod:`rlhflab.outdir`)."""
    return check_output_dir(Path(cfg.output_dir), is_run_dir, "a run", overwrite)


def prepare_run_dir(cfg: Config, overwrite: bool, note: str | None = None) -> Path:
    """Create the run directory and write the resolved config (only once everything has loaded); ``note`` is
    appended to config.yaml as YAML comment lines (how the run was launched, e.g. under torchrun)."""
    run_dir = check_run_dir(cfg, overwrite)
    if overwrite and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    if note:
        with (run_dir / "config.yaml").open("a") as f:
            f.write("".join(f"# {line}\n" for line in note.splitlines()))
    return run_dir


# ----------------------------------------------------------------------------------------------------------------
# rollout


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
    )
    mask = response_mask(response_ids, codec.eos_ids)  # (B, T)
    return Rollout(prompt_ids, prompt_mask, response_ids, mask), codec.decode(response_ids, mask)


@torch.no_grad()
def score_rollout(
    setup: Setup, rollout: Rollout, cfg: Config, with_values: bool = True, with_logprobs: bool = True
) -> tuple[Rollout, float | None]:
    """Old logprobs, reference logprobs and values, ``train.scoring_batch_size`` rows per pass (with a plain LM
    head no logits exist; otherwise they are reduced ``train.micro_batch_size`` rows at a time); also the policy's
    mean token entropy. Without
    ``with_logprobs`` (see :func:`old_logprobs_from_update`) the old logprobs and the entropy stay None."""
    roles, temperature, head_rows = setup.roles, cfg.rollout.temperature, cfg.train.micro_batch_size
    # whole micro-batches per pass, reduced micro-batch by micro-batch: every reduction sees the shapes the update's
    # passes will, so old logprobs equal the first update's logprobs bit for bit (ratio = 1 exactly at step 0)
    chunks = list(rollout.chunks(max(1, cfg.train.scoring_batch_size // head_rows) * head_rows))
    # one role at a time: switching adapters walks every LoRA layer, so each role's passes run back to back
    logprobs, entropy_sum, actor = [], 0.0, roles.actor()
    for chunk in chunks if with_logprobs else []:
        lp, ent = response_logprobs(actor, chunk, temperature, with_entropy=True, rows_at_once=head_rows)
        logprobs.append(lp)
        entropy_sum += masked_sum(ent, chunk.response_mask).item()
    with roles.reference_model() as reference:
        ref_logprobs = [response_logprobs(reference, c, temperature, rows_at_once=head_rows)[0] for c in chunks]
    values = [roles.values(chunk, cfg.critic.granularity) for chunk in chunks] if with_values else []
    return replace(
        rollout,
        logprobs=torch.cat(logprobs) if with_logprobs else None,
        ref_logprobs=torch.cat(ref_logprobs),
        values=torch.cat(values) if with_values else None,
    ), entropy_sum / rollout.response_mask.sum().item() if with_logprobs else None


def old_logprobs_from_update(cfg: Config) -> bool:
    """Whether the update's first epoch measures the old logprobs instead of a scoring pass.

    GRPO needs them only inside its loss (its KL term is in the loss, not in the rewards or advantages). With one
    minibatch per epoch and dropout off, every micro-batch of the first epoch runs at the sampling parameters, so
    its own detached logprobs are the numbers a scoring pass would give (bit for bit: same shapes, no noise);
    taking them saves one no-grad policy pass over the batch. PPO and RLOO fold the KL into rewards before the
    update, so they need the scoring pass."""
    a = cfg.algorithm
    return a.name == "grpo" and a.num_minibatches == 1 and not cfg.train.dropout


# ----------------------------------------------------------------------------------------------------------------
# update

WEIGHTED_STATS = ("policy/approxkl", "policy/clipfrac", "policy/ratio", "policy/k3_kl", "val/clipfrac")
MICRO_STEP = {"ppo": ppo_micro_step, "rloo": group_micro_step, "grpo": group_micro_step}
ADVANTAGES = {"ppo": ppo_advantages, "rloo": group_advantages, "grpo": group_advantages}


class NonFiniteUpdates(Exception):
    """Too many optimiser updates in a row had a non-finite loss or gradient."""


def accumulate_gradients(
    setup: Setup,
    minibatch: Rollout,
    cfg: Config,
    num_tokens: torch.Tensor,
    num_seqs: int,
    kl_coef: float,
    totals: dict,
    measured: list | None = None,
) -> bool:
    """Forward + backward of one minibatch in micro-batches, gradients summed into ``.grad``; the stats are added
    to ``totals``. Returns whether every micro-batch's loss was finite. A minibatch without old logprobs has each
    micro-batch's measured ``(old_logprobs, entropy_sum)`` appended to ``measured`` (see :func:`update`).

    ``num_tokens`` / ``num_seqs`` normalise the loss: the minibatch's own for one process; under data parallelism
    those of the global minibatch (all processes), so this process's loss is its partial sum of the global loss and
    the gradients of all processes add up to the global gradient. ``kl_coef``: this step's β (GRPO's loss term).
    """
    loss_finite = True
    for micro in minibatch.chunks(cfg.train.micro_batch_size):
        stats = MICRO_STEP[cfg.algorithm.name](setup.roles, micro, cfg, num_tokens, num_seqs, kl_coef)
        if "old_logprobs" in stats:
            measured.append((stats.pop("old_logprobs"), stats.pop("entropy_sum")))
        token_share = (micro.loss_mask.sum() / num_tokens).item()
        row_share = len(micro) / num_seqs  # a sequence critic's stats are means over rows, not tokens
        loss_finite &= bool(torch.isfinite(stats["loss/policy"]))
        for key, value in stats.items():
            # losses are already partial sums of the minibatch loss; means are weighted by tokens (or rows); a
            # micro-batch with no token in the loss (every row a masked truncated completion) adds nothing (0/0)
            by_rows = key.startswith("val/") and cfg.critic.granularity == "sequence"
            weight = (row_share if by_rows else token_share) if key in WEIGHTED_STATS else 1.0
            totals[key] = totals.get(key, 0.0) + (value.item() * weight if weight else 0.0)
    return loss_finite


def update(
    setup: Setup,
    rollout: Rollout,
    cfg: Config,
    optimizer,
    scheduler,
    params,
    generator,
    skips: dict,
    dist: Dist = SINGLE,
    *,
    kl_coef: float,
) -> tuple[dict, Rollout]:
    """K epochs × M shuffled minibatches; each minibatch accumulates micro-batches into one optimiser step.
    Returns the stats and the rollout, whose old logprobs the first epoch fills in when it has none (GRPO, see
    :func:`old_logprobs_from_update`; the stats then hold the policy's mean token entropy, ``objective/entropy``).

    An update whose loss or gradient is not finite is skipped (the scheduler still advances) and counted in
    ``skips``; ``train.max_nonfinite_in_a_row`` of them in a row raise :class:`NonFiniteUpdates`.
    With ``algorithm.target_kl``, an epoch whose minibatches' mean approx-KL exceeds it is the last (cleanrl's
    early stop); the skipped updates still advance the scheduler, and the stats average the updates that ran.
    Under data parallelism each process shuffles its own rows; the global minibatch is the union of the processes'
    minibatches, its gradient the all-reduced sum (see :func:`accumulate_gradients`). ``kl_coef`` is this step's
    β from the KL controller (fixed or adaptive), the one GRPO's loss uses.
    """
    a, t = cfg.algorithm, cfg.train
    minibatch_size = len(rollout) // a.num_minibatches
    totals: dict[str, float] = {}
    grad_norms = []
    measured: list[tuple[torch.Tensor, torch.Tensor]] = []  # (old logprobs (b, T), entropy sum) per micro-batch
    entropy = None
    if rollout.logprobs is None and a.num_minibatches != 1:
        raise ValueError("the first epoch can stand in for the old logprobs only with algorithm.num_minibatches=1")
    lr = scheduler.get_last_lr()[0]  # the rate of this step's first update, logged as lr
    epochs = 0
    for _epoch in range(a.ppo_epochs):
        approxkl_before = totals.get("policy/approxkl", 0.0)
        order = torch.randperm(len(rollout), generator=generator).to(rollout.prompt_ids.device)
        for rows in order.split(minibatch_size):
            minibatch = rollout.select(rows)
            num_tokens = dist.sum(minibatch.loss_mask.sum()).clamp(min=1)  # all processes' loss tokens of it
            optimizer.zero_grad(set_to_none=True)
            loss_finite = accumulate_gradients(
                setup, minibatch, cfg, num_tokens, len(minibatch) * dist.world_size, kl_coef, totals, measured
            )
            if measured:  # the first epoch measured every row's old logprobs at the sampling parameters
                old_logprobs = torch.empty_like(rollout.response_ids, dtype=measured[0][0].dtype)  # (B, T)
                old_logprobs[rows] = torch.cat([logprobs for logprobs, _ in measured])
                rollout = replace(rollout, logprobs=old_logprobs)
                entropy = sum(entropy_sum for _, entropy_sum in measured).item() / rollout.response_mask.sum().item()
                measured = []
            loss_finite = dist.all_reduce_gradients(params, loss_finite)  # Σ over processes = global gradient
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            if loss_finite and torch.isfinite(grad_norm):
                grad_norms.append(grad_norm.item())
                optimizer.step()
                skips["in_a_row"] = 0
            else:
                skips["total"] += 1
                skips["in_a_row"] += 1
                if skips["in_a_row"] >= t.max_nonfinite_in_a_row:
                    raise NonFiniteUpdates(f"{skips['in_a_row']} updates in a row had a non-finite loss or gradient")
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        epochs += 1
        if a.target_kl is not None:  # the all-reduced mean over this epoch's minibatches: one decision everywhere
            epoch_kl = dist.sum_values({"kl": totals.get("policy/approxkl", 0.0) - approxkl_before})["kl"]
            epoch_kl /= a.num_minibatches
            if epoch_kl > a.target_kl:
                break
    for _ in range((a.ppo_epochs - epochs) * a.num_minibatches):
        scheduler.step()  # the skipped updates still advance the schedule: it does not depend on early stops
    updates = epochs * a.num_minibatches
    totals = dist.sum_values(totals)  # partial sums of global losses and token-weighted means
    out = {key: value / updates for key, value in totals.items()}
    out["policy/grad_norm"] = sum(grad_norms) / len(grad_norms) if grad_norms else float("nan")
    out["train/skipped_steps"] = skips["total"]
    out["lr"] = lr
    if a.target_kl is not None:
        out["policy/epochs"] = epochs
    if entropy is not None:
        out["objective/entropy"] = entropy
    return out, rollout


def reduce_metrics(metrics: dict, dist: Dist, tokens: int, global_keys) -> dict:
    """One step's metrics over all processes (identity for one process), plus ``dist/world_size``.

    ``global_keys`` (update and advantage stats, step, lr, β) are already the same on every process; ``time/*``
    take the slowest process; the entropy is weighted by each process's ``tokens``; every other metric is a mean
    over rows, and every process holds the same number of rows, so the mean of the per-process means is the
    global mean."""
    if not dist.enabled:
        return metrics
    row_means = {k: v for k, v in metrics.items() if k not in global_keys and not k.startswith(("time/", "perf/"))}
    sums = dist.sum_values({**row_means, "objective/entropy": metrics["objective/entropy"] * tokens, "_tokens": tokens})
    total_tokens = sums.pop("_tokens")
    entropy = sums.pop("objective/entropy") / total_tokens
    slowest = dist.max_values({k: v for k, v in metrics.items() if k.startswith("time/")})
    return {
        **metrics,
        **{k: v / dist.world_size for k, v in sums.items()},
        "objective/entropy": entropy,
        **slowest,
        "perf/tokens_per_second": total_tokens / slowest["time/step"],
        "dist/world_size": dist.world_size,
    }


# ----------------------------------------------------------------------------------------------------------------
# the loop


class StopRequest:
    """First Ctrl-C / SIGTERM: finish the current step, checkpoint, stop. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\nstop requested: finishing this step, then saving a checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Run ``cfg.train.steps`` PPO steps; writes the run directory described in DESIGN §4. Returns its path.

    Under ``torchrun`` every process runs this with its share of each batch (:mod:`rlhflab.distributed`)."""
    dist = distributed.init(resolve_device(cfg.model.device))
    try:
        return _train(cfg, dist, overwrite, resume)
    finally:
        dist.close()


def _train(cfg: Config, dist: Dist, overwrite: bool, resume: bool) -> Path:
    a, r, t = cfg.algorithm, cfg.rollout, cfg.train
    dist.check_batch(r.batch_size, r.samples_per_prompt, a.num_minibatches, t.micro_batch_size)
    if cfg.distributed.fsdp and not dist.enabled:
        raise UserError(
            "distributed.fsdp: shards the base model over torchrun processes; launch with torchrun "
            "--nproc_per_node N (N >= 2), or leave it off"
        )
    if dist.enabled:  # a default output dir names the time: take rank 0's, which may be a second apart
        cfg.output_dir = dist.all_gather_objects(cfg.output_dir)[0]
    run_dir = Path(cfg.output_dir) if resume else check_run_dir(cfg, overwrite)
    seed_everything(cfg.seed)  # the same on every process: identical LoRA initialisation
    if dist.enabled:
        with dist.main_process_first():  # rank 0 builds the demo assets (first use); the others then find them
            resolve_sources(cfg)
    setup = load_setup(cfg, dist=dist)  # a bad model, prompts file or judge stops here, before the run dir is touched
    if not resume and dist.is_main:
        prepare_run_dir(cfg, overwrite, note=distributed_note(cfg, dist))
    roles, device = setup.roles, setup.device
    reward = setup.reward

    sampler = PromptSampler(setup.train_prompts, cfg.seed)  # the same global order on every process
    sample_gen = torch.Generator(device=device).manual_seed(cfg.seed + dist.rank)  # token sampling, per process
    shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)  # minibatch order (of each process's own rows)
    params = roles.trainable_parameters()
    dist.broadcast_parameters(params)  # every process starts from rank 0's weights
    if dist.enabled:
        seed_everything(cfg.seed + dist.rank)  # independent dropout noise per process (when train.dropout is on)
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    total_updates = t.steps * a.ppo_epochs * a.num_minibatches
    warmup = int(t.warmup_ratio * total_updates)
    scheduler = build_scheduler(optimizer, warmup, total_updates, t.lr_schedule)  # warm-up from a non-zero rate
    kl_ctl = KLController(a.kl_coef, a.kl_target, a.kl_horizon)
    skips = {"total": 0, "in_a_row": 0}  # non-finite updates skipped
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "kl_controller": kl_ctl, "sampler": sampler}

    def trainer_state() -> dict:
        """Identical on every process except the RNGs, gathered per process under torchrun (a collective)."""
        state = {name: obj.state_dict() for name, obj in stateful.items()}
        state = {**state, "sample_gen": sample_gen.get_state(), "shuffle_gen": shuffle_gen.get_state(), "skips": skips}
        if dist.enabled:
            state["per_rank"] = dist.all_gather_objects({"sample_gen": sample_gen.get_state(), "rng": rng_state()})
        return state

    start_step = 0
    if resume:
        start_step = resume_state(run_dir, roles, stateful, sample_gen, shuffle_gen, skips, dist, cfg.seed)
    trackers = Trackers(cfg, run_dir, t.steps, start_step, main_process=dist.is_main)
    prompts_per_step = r.batch_size // r.samples_per_prompt  # global; each process takes its share
    from_update = old_logprobs_from_update(cfg)  # GRPO: the update's first epoch measures the old logprobs
    if t.compile and dist.is_main:
        print("train.compile: the first step also compiles the model's blocks (a minute or so on a CPU)")

    with StopRequest() as stop:
        for step in range(start_step + 1, t.steps + 1):
            started = time.perf_counter()
            # 1. sample completions for this step's prompts (k contiguous samples per prompt)
            prompts = [p for p in dist.shard(sampler.next(prompts_per_step)) for _ in range(r.samples_per_prompt)]
            rollout, completions = sample_rollout(
                roles.actor(), setup.codec, prompts, cfg, sample_gen, device, roles.stop_together
            )
            generated = time.perf_counter()
            ended = (is_eos(rollout.response_ids, setup.codec.eos_ids) & rollout.response_mask).any(1)  # (B,)
            if r.mask_truncated_completions:  # rows cut at max_new_tokens get no policy loss
                rollout = replace(rollout, truncated=~ended)
            # 2. judge the completions (a completion without EOS loses reward.missing_eos_penalty)
            scores, components = reward(prompts, completions)
            if cfg.reward.missing_eos_penalty is not None:
                scores = missing_eos_penalty(scores, ended.cpu(), cfg.reward.missing_eos_penalty)
            rollout = replace(rollout, scores=scores.to(device))
            judged = time.perf_counter()
            # 3. old logprobs (GRPO: from the update's first epoch), reference logprobs, values (no gradients)
            rollout, entropy = score_rollout(
                setup, rollout, cfg, with_values=roles.critic is not None, with_logprobs=not from_update
            )
            scored = time.perf_counter()
            # 4. advantages: GAE over per-token rewards (PPO) or per-sequence baselines (RLOO, GRPO)
            kl_coef = kl_ctl.value
            rollout, adv_stats = ADVANTAGES[a.name](rollout, cfg, kl_coef, dist=dist)
            # 5. K epochs × M minibatches of the clipped policy loss (+ clipped value loss for PPO)
            try:
                update_stats, rollout = update(
                    setup, rollout, cfg, optimizer, scheduler, params, shuffle_gen, skips, dist, kl_coef=kl_coef
                )
                if from_update:  # this process's rows only: reduce_metrics weighs it like the scoring pass's
                    entropy = update_stats.pop("objective/entropy")
            except NonFiniteUpdates as err:
                trackers.close()
                last = latest_checkpoint(run_dir)
                raise UserError(
                    f"training stopped at step {step}: {err}. Lower train.lr or check the reward; "
                    f"last good checkpoint: {last or 'none (set checkpoint.every)'}"
                ) from None
            finished = time.perf_counter()
            # 6. metrics (over all processes), KL controller, checkpoint
            mask = rollout.response_mask
            kl_per_seq = masked_sum(kl_penalty(rollout.logprobs, rollout.ref_logprobs, "k1"), mask, dim=1)  # (B,)
            metrics = {
                "step": step,
                "objective/scores": scores.mean().item(),
                "objective/kl": kl_per_seq.mean().item(),
                "objective/rlhf_reward": (rollout.scores - kl_coef * kl_per_seq).mean().item(),
                "objective/entropy": entropy,
                "objective/kl_coef": kl_coef,
                **update_stats,
                **adv_stats,
                "gen/length": mask.sum(1).float().mean().item(),
                "gen/eos_rate": ended.float().mean().item(),
                "time/step": finished - started,
                "time/generate": generated - started,
                "time/score": judged - generated,
                "time/forward": scored - judged,
                "time/update": finished - scored,
                "perf/tokens_per_second": mask.sum().item() / (finished - started),
                **{f"reward/{name}": values.mean().item() for name, values in components.items()},
            }
            same_everywhere = {"step", "objective/kl_coef", "lr", *update_stats, *adv_stats}
            metrics = reduce_metrics(metrics, dist, mask.sum().item(), same_everywhere)
            trackers.log(metrics)
            if samples_due(step, cfg.tracking.samples_every, t.steps):  # rank 0's share under torchrun
                n = cfg.tracking.samples_count
                rows = zip(prompts[:n], completions[:n], scores[:n].tolist())
                trackers.log_samples(step, [dict(step=step, prompt=p, completion=c, score=s) for p, c, s in rows])
            kl_ctl.update(metrics["objective/kl"], len(rollout) * dist.world_size)
            stop_requested = dist.any(stop.requested)  # every process stops after the same step
            every = cfg.checkpoint.every
            if (every and step % every == 0 and step < t.steps) or (stop_requested and step < t.steps):
                state = trainer_state()
                if dist.is_main:
                    path = save_checkpoint(run_dir, step, roles, state, cfg.checkpoint.keep)
            if stop_requested and step < t.steps:
                trackers.close()
                if dist.is_main:
                    print(
                        f"stopped after step {step}; checkpoint in {path}. Continue with: "
                        f"rlhflab train --resume --output-dir {run_dir}",
                        file=sys.stderr,
                    )
                raise KeyboardInterrupt
    trackers.close()
    if dist.is_main:  # rank 0 alone writes the adapters, evaluates and reports
        roles.save(run_dir / "final")
        print(f"training done: adapters in {run_dir / 'final'}; metrics in {run_dir / 'metrics.jsonl'}")
    if cfg.eval.enabled and (dist.is_main or roles.sharded):  # a sharded model's forwards need every process
        from rlhflab.evaluate import evaluate_run

        evaluate_run(run_dir, cfg, setup, reward, main_process=dist.is_main)
    if not dist.is_main:
        return run_dir
    from rlhflab.report import write_outputs

    write_outputs(run_dir)  # report.md/.html + plots/, final/README.md; never raises
    return run_dir


def samples_due(step: int, every: int, last_step: int) -> bool:
    """A sample table at the first step, every ``every`` steps and the last step (never when every = 0)."""
    return every > 0 and (step == 1 or step % every == 0 or step == last_step)


def distributed_note(cfg: Config, dist: Dist) -> str | None:
    """The config.yaml comment that records a torchrun launch (None for one process)."""
    if not dist.enabled:
        return None
    b, w = cfg.rollout.batch_size, dist.world_size
    sharded = "; base weights sharded with FSDP2 (distributed.fsdp)" if cfg.distributed.fsdp else ""
    return (
        f"distributed: torchrun, world_size {w}, backend {dist.backend}{sharded}\n"
        f"rollout.batch_size {b} is the global batch: {b // w} completions per process x {w} processes"
    )


def resume_state(
    run_dir: Path,
    roles: Roles,
    stateful: dict,
    sample_gen,
    shuffle_gen,
    skips: dict,
    dist: Dist = SINGLE,
    seed: int = 0,
) -> int:
    """Restore everything from the newest complete checkpoint; cut metrics.jsonl and samples.jsonl back to its step.

    Under torchrun every process loads the same checkpoint (the run directory must be reachable from each), then
    its own token-sampling generator and global RNGs when the checkpoint was written by as many processes."""
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    state = load_checkpoint(path, roles)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    sample_gen.set_state(state["sample_gen"])
    shuffle_gen.set_state(state["shuffle_gen"])
    skips.update(state["skips"])
    step = state["step"]
    saved_world = len(state.get("per_rank", [None]))
    if dist.enabled and saved_world == dist.world_size:
        own = state["per_rank"][dist.rank]
        sample_gen.set_state(own["sample_gen"])
        set_rng_state(own["rng"])
    elif dist.enabled and dist.rank > 0:  # rank 0 keeps the saved stream; the others start fresh ones
        sample_gen.manual_seed(seed + dist.rank + 1_000_003 * step)
    if saved_world != dist.world_size and dist.is_main:
        print(
            f"note: {path.name} was written by {saved_world} process(es), this run has {dist.world_size}: the run "
            "continues with the same global batch, but sampling is not an exact replay",
            file=sys.stderr,
        )
    if dist.is_main:
        for log in (run_dir / "metrics.jsonl", run_dir / "samples.jsonl"):
            if log.exists():
                kept = [line for line in log.read_text().splitlines() if line and json.loads(line)["step"] <= step]
                log.write_text("".join(line + "\n" for line in kept))
        print(f"resuming {run_dir} from step {step} ({path.name})")
    return step
