"""``rlhflab dpo``: offline Direct Preference Optimisation of the policy adapter on preference pairs.

The reference is the base with adapters disabled (no second copy), as in RL runs. A step: pairs → one batch of 2b
rows (each prompt, left-padded like RL prompts, followed by its chosen or rejected answer + EOS) → summed response
logprobs under the reference (no gradients) and the policy → :func:`rlhflab.algorithms.preference.dpo_loss`
(sigmoid or IPO) → AdamW step → log, with TRL's metric names. The run directory is an RL run's: ``config.yaml``,
``metrics.jsonl``, ``checkpoints/`` (``--resume``), ``final/`` (PEFT adapter), ``eval/`` (the same before/after
evaluation on held-out prompts, :func:`rlhflab.evaluate.evaluate_run`) and the report; ``eval/pairs.json`` holds the
held-out pairs' DPO metrics before and after.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import torch

from rlhflab.algorithms.preference import dpo_loss
from rlhflab.batch import Rollout
from rlhflab.checkpoint import restore_latest, save_checkpoint, truncate_log
from rlhflab.config import Config
from rlhflab.data.preferences import PreferencePair
from rlhflab.data.prompts import PromptSampler
from rlhflab.errors import UserError
from rlhflab.models.forward import response_logprobs
from rlhflab.models.roles import Roles
from rlhflab.ops import masked_sum
from rlhflab.pairwise import StepLog, chunks, load_pairs
from rlhflab.rollout import PromptCodec
from rlhflab.schedule import build_scheduler
from rlhflab.session import check_run_dir, load_setup, prepare_run_dir, seed_everything

SHOWN = ("loss", "rewards/accuracies", "rewards/margins", "eval/rewards/accuracies")


def pair_batch(codec: PromptCodec, pairs: list[PreferencePair], cfg: Config, device: torch.device) -> Rollout:
    """Rows 0..b-1: each prompt + its chosen answer; rows b..2b-1: + its rejected answer. Answers are cut to
    ``preference.max_length - 1`` tokens, then end with EOS (the policy learns to stop), right-padded."""
    prompts = [p.prompt for p in pairs] * 2
    prompt_ids, prompt_mask = codec.encode(prompts, cfg.data.max_prompt_tokens, device)  # (2b, P)
    answers = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    eos = codec.eos_ids[0]
    rows = [
        ids[: cfg.preference.max_length - 1] + [eos]
        for ids in codec.tokenizer(answers, add_special_tokens=False)["input_ids"]
    ]
    width = max(len(r) for r in rows)
    response_ids = torch.full((len(rows), width), codec.pad_id, dtype=torch.long)
    response_mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, ids in enumerate(rows):
        response_ids[i, : len(ids)] = torch.tensor(ids)
        response_mask[i, : len(ids)] = True
    return Rollout(prompt_ids, prompt_mask, response_ids.to(device), response_mask.to(device))  # (2b, P), (2b, T)


def sequence_logps(model: torch.nn.Module, batch: Rollout) -> torch.Tensor:
    """Summed logprobs (2b,) of each row's answer under ``model`` (temperature 1)."""
    logprobs, _ = response_logprobs(model, batch, 1.0)  # (2b, T)
    return masked_sum(logprobs, batch.response_mask, dim=1)


def pairs_loss(roles: Roles, codec: PromptCodec, pairs: list[PreferencePair], cfg: Config, device):
    """(loss, stats) of a micro-batch of pairs; the policy's logprobs carry gradients when they are enabled."""
    batch = pair_batch(codec, pairs, cfg, device)
    with torch.no_grad(), roles.reference_model() as reference:
        ref = sequence_logps(reference, batch)
    logps = sequence_logps(roles.actor(), batch)
    b, p = len(pairs), cfg.preference
    return dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], p.beta, p.loss_type)


@torch.no_grad()
def evaluate_pairs(roles: Roles, codec: PromptCodec, pairs: list[PreferencePair], cfg: Config, device) -> dict:
    """The DPO loss and TRL's metrics over the held-out pairs (means over pairs)."""
    if not pairs:
        return {}
    totals: dict[str, float] = {}
    for part in chunks(pairs, cfg.train.scoring_batch_size):
        loss, stats = pairs_loss(roles, codec, part, cfg, device)
        for key, value in {"loss": loss, **stats}.items():
            totals[key] = totals.get(key, 0.0) + value.item() * len(part) / len(pairs)
    return totals


def train_dpo(cfg: Config, overwrite: bool = False, resume: bool = False) -> Path:
    """Train per ``cfg`` (algorithm.name dpo) and write the run directory; returns its path."""
    p, t = cfg.preference, cfg.train
    run_dir = Path(cfg.output_dir) if resume else check_run_dir(cfg, overwrite)
    seed_everything(cfg.seed)
    setup = load_setup(cfg, with_critic=False)
    roles, device = setup.roles, setup.device
    train_pairs, eval_pairs, conversational = load_pairs(cfg, setup.tokenizer)
    codec = replace(setup.codec, chat_template=False) if conversational else setup.codec  # already rendered
    if not resume:
        prepare_run_dir(cfg, overwrite)
    params = roles.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = build_scheduler(optimizer, int(t.warmup_ratio * t.steps), t.steps, t.lr_schedule)
    sampler = PromptSampler(train_pairs, cfg.seed)
    stateful = {"optimizer": optimizer, "scheduler": scheduler, "sampler": sampler}
    start_step = 0
    if resume:
        checkpoint, state = restore_latest(run_dir, roles, stateful)
        start_step = state["step"]
        truncate_log(run_dir / "metrics.jsonl", start_step)
        print(f"resuming {run_dir} from step {start_step} ({checkpoint.name})")
    else:
        before = evaluate_pairs(roles, codec, eval_pairs, cfg, device)
        (run_dir / "eval").mkdir(exist_ok=True)
        (run_dir / "eval" / "pairs_before.json").write_text(json.dumps(before, indent=2) + "\n")
    print(f"dpo ({p.loss_type}, beta {p.beta}): {len(train_pairs)} training pairs, {len(eval_pairs)} held out")

    log = StepLog(run_dir, t.steps, start_step, "dpo", SHOWN, cfg.tracking.progress)
    for step in range(start_step + 1, t.steps + 1):
        started = time.perf_counter()
        # 1. this step's pairs; 2. each micro-batch's loss, weighted by its share of the pairs
        pairs = sampler.next(p.batch_size)
        sums: dict[str, float] = {}
        for part in chunks(pairs, t.micro_batch_size):
            loss, stats = pairs_loss(roles, codec, part, cfg, device)
            share = len(part) / len(pairs)
            (loss * share).backward()
            for key, value in {"loss": loss.detach(), **stats}.items():
                sums[key] = sums.get(key, 0.0) + value.item() * share
        # 3. clip, step (a non-finite gradient stops the run: nothing downstream could use it), schedule
        grad_norm = torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm).item()
        if not math.isfinite(grad_norm):
            log.close()
            raise UserError(f"dpo: non-finite gradient at step {step}; lower train.lr or raise preference.beta")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lr = scheduler.get_last_lr()[0]
        scheduler.step()
        # 4. log (held-out pairs every preference.eval_every steps and at the end), checkpoint
        metrics = {"step": step, **sums, "grad_norm": grad_norm, "lr": lr, "time/step": time.perf_counter() - started}
        if step == t.steps or (p.eval_every and step % p.eval_every == 0):
            metrics |= {f"eval/{k}": v for k, v in evaluate_pairs(roles, codec, eval_pairs, cfg, device).items()}
        log.log(metrics)
        every = cfg.checkpoint.every
        if every and step % every == 0 and step < t.steps:
            state = {name: obj.state_dict() for name, obj in stateful.items()}
            save_checkpoint(run_dir, step, roles, state, cfg.checkpoint.keep)
    log.close()

    roles.save(run_dir / "final")
    after = evaluate_pairs(roles, codec, eval_pairs, cfg, device)
    before_file = run_dir / "eval" / "pairs_before.json"
    before = json.loads(before_file.read_text()) if before_file.is_file() else {}
    (run_dir / "eval" / "pairs.json").write_text(json.dumps({"before": before, "after": after}, indent=2) + "\n")
    print(f"training done: adapter in {run_dir / 'final'}; metrics in {run_dir / 'metrics.jsonl'}")
    if after:
        print(
            f"held-out pairs ({len(eval_pairs)}): implicit-reward accuracy {after['rewards/accuracies']:.1%}, "
            f"margin {after['rewards/margins']:+.3f}, loss {after['loss']:.3f}"
        )
    if cfg.eval.enabled:
        from rlhflab.evaluate import evaluate_run

        evaluate_run(run_dir, cfg, setup, setup.reward)
    from rlhflab.report import write_outputs

    write_outputs(run_dir)
    return run_dir
