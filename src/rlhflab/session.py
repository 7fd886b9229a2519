"""Setting a run up: the seed, the model and prompt sources, the loaded roles, and the run directory.

:func:`load_setup` loads everything a step needs (:class:`Setup`); ``rlhflab train`` and ``rlhflab eval`` both start
here. :func:`prepare_run_dir` writes the resolved config once everything has loaded; :func:`resume_state` continues a
run directory from its newest checkpoint.
"""

from __future__ import annotations

import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhflab.algorithms.registry import algorithm_for
from rlhflab.checkpoint import restore_latest, set_rng_state, truncate_log
from rlhflab.config import Config, save_config
from rlhflab.data.prompts import read_prompts
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
from rlhflab.outdir import check_output_dir, is_run_dir
from rlhflab.rewards import CompositeReward, build_reward
from rlhflab.rollout import PromptCodec


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


def extra_prompts(cfg: Config) -> list[str]:
    """``data.extra_prompts``: its list, or the demo's negative openings for ``demo-negative``."""
    extra = cfg.data.extra_prompts
    if isinstance(extra, list):
        return extra
    if extra != "demo-negative":
        raise UserError(f"data.extra_prompts: a list of prompts or demo-negative, got {extra!r}")
    from rlhflab.data.demo import NEGATIVE_OPENINGS

    return list(NEGATIVE_OPENINGS)


def with_extra_prompts(prompts: list[str], extra: list[str]) -> list[str]:
    """The source's prompts, then ``data.extra_prompts`` not already among them (each prompt once)."""
    if any(not p.strip() for p in extra):
        raise UserError("data.extra_prompts: an empty prompt")
    return list(dict.fromkeys([*prompts, *extra]))


def held_out_prompts(cfg: Config, train_prompts: list[str], eval_file: str | None) -> list[str]:
    """eval.prompts, then data.eval_prompts_file's or (imdb) data.eval_dataset_split's openings; without any, the
    first training prompts show the change. A prompt listed twice is evaluated once (× eval.samples_per_prompt)."""
    if eval_file:
        prompts = cfg.eval.prompts + read_prompts(eval_file, "data.eval_prompts_file")
    elif cfg.data.source == "imdb" and cfg.data.eval_dataset_split:
        from rlhflab.data.imdb import imdb_prompts

        prompts = cfg.eval.prompts + imdb_prompts(cfg.data.eval_dataset_split, cfg.data.prompt_words)
    else:
        prompts = cfg.eval.prompts
    if leaked := [p for p in extra_prompts(cfg) if p in set(prompts)]:
        raise UserError(f"data.extra_prompts: {leaked[0]!r} is also a held-out evaluation prompt")
    return list(dict.fromkeys(prompts or train_prompts[:16]))


def load_setup(cfg: Config, with_critic: bool | None = None, dist: Dist = SINGLE) -> Setup:
    """Tokenizer, roles and prompts; a critic exists when the algorithm needs one, unless ``with_critic`` says
    otherwise.

    Under torchrun (``dist``) every process loads the same; a CUDA device becomes ``cuda:LOCAL_RANK``. With
    ``distributed.fsdp`` the base is loaded in CPU memory and then sharded, each process's shards on its device."""
    model_name, train_file, eval_file = resolve_sources(cfg)
    # prompts first: a bad prompts file fails in a second, before a large model is loaded
    if cfg.data.source == "imdb":
        from rlhflab.data.imdb import imdb_prompts

        train_prompts = imdb_prompts(cfg.data.dataset_split, cfg.data.prompt_words)
    else:
        train_prompts = read_prompts(train_file)
    train_prompts = with_extra_prompts(train_prompts[: cfg.data.max_prompts or None], extra_prompts(cfg))
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
    with_critic = algorithm_for(cfg).needs_critic if with_critic is None else with_critic
    roles = Roles(base, cfg, with_critic=with_critic)
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
    path, state = restore_latest(run_dir, roles, stateful)
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
            truncate_log(log, step)
        print(f"resuming {run_dir} from step {step} ({path.name})")
    return step
