"""The training loop: rollout → judge → score → advantages → K epochs × M minibatches → log, checkpoint.

Reads top to bottom; setting up is :mod:`rlhflab.session`, sampling and scoring :mod:`rlhflab.rollout`, the
update :mod:`rlhflab.update`, and what differs between PPO, RLOO and GRPO their :class:`~rlhflab.algorithms.base.
Algorithm` (:mod:`rlhflab.algorithms.registry`); the math is in :mod:`rlhflab.ops` and :mod:`rlhflab.algorithms`.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from rlhflab import distributed
from rlhflab.algorithms.kl_control import KLController
from rlhflab.algorithms.registry import algorithm_for
from rlhflab.checkpoint import latest_checkpoint, rng_state, save_checkpoint
from rlhflab.config import Config
from rlhflab.data.prompts import PromptSampler
from rlhflab.distributed import Dist
from rlhflab.errors import UserError
from rlhflab.hooks import NO_HOOKS, LoopHooks
from rlhflab.models.loading import resolve_device
from rlhflab.ops import kl_penalty, masked_sum
from rlhflab.rewards.base import missing_eos_penalty
from rlhflab.rollout import is_eos, sample_rollout, score_rollout
from rlhflab.schedule import build_scheduler
from rlhflab.session import (
    check_run_dir,
    distributed_note,
    load_setup,
    prepare_run_dir,
    resolve_sources,
    resume_state,
    seed_everything,
)
from rlhflab.tracking import Trackers
from rlhflab.update import NonFiniteUpdates, update

# ----------------------------------------------------------------------------------------------------------------
# metrics


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


def train(cfg: Config, overwrite: bool = False, resume: bool = False, hooks: LoopHooks = NO_HOOKS) -> Path:
    """Run ``cfg.train.steps`` steps of ``cfg.algorithm``; writes the run directory described in DESIGN §4. Returns
    its path. ``hooks`` watch the loop's phases (``rlhflab bench``); they never change what it computes.

    Under ``torchrun`` every process runs this with its share of each batch (:mod:`rlhflab.distributed`).
    ``algorithm.name`` rm and dpo learn from preference pairs instead (:mod:`rlhflab.rm`, :mod:`rlhflab.dpo`; one
    process)."""
    if cfg.algorithm.name == "rm":
        from rlhflab.rm import train_reward_model

        return train_reward_model(cfg, overwrite)
    if cfg.algorithm.name == "dpo":
        from rlhflab.dpo import train_dpo

        return train_dpo(cfg, overwrite, resume)
    dist = distributed.init(resolve_device(cfg.model.device))
    try:
        return _train(cfg, dist, overwrite, resume, hooks)
    finally:
        dist.close()


def _train(cfg: Config, dist: Dist, overwrite: bool, resume: bool, hooks: LoopHooks) -> Path:
    a, r, t = cfg.algorithm, cfg.rollout, cfg.train
    algorithm = algorithm_for(cfg)
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
    hooks.roles_ready(roles)

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
    from_update = algorithm.measures_old_logprobs(cfg)  # GRPO: the update's first epoch measures the old logprobs
    if t.compile and dist.is_main:
        print("train.compile: the first step also compiles the model's blocks (a minute or so on a CPU)")
    probe = None  # eval.every: the held-out evaluation during training (a sharded model needs every process)
    if cfg.eval.every and (dist.is_main or roles.sharded):
        from rlhflab.evaluate import HeldOutProbe

        probe = HeldOutProbe(setup, cfg, reward, main_process=dist.is_main)

    loop_began, eval_seconds = time.perf_counter(), 0.0  # time/elapsed: the loop's wall-clock, eval.every excluded
    with StopRequest() as stop:
        for step in range(start_step + 1, t.steps + 1):
            hooks.step_started(step)
            started = time.perf_counter()
            # 1. sample completions for this step's prompts (k contiguous samples per prompt)
            prompts = [p for p in dist.shard(sampler.next(prompts_per_step)) for _ in range(r.samples_per_prompt)]
            with hooks.phase("generate"):
                rollout, completions = sample_rollout(
                    roles.actor(), setup.codec, prompts, cfg, sample_gen, device, roles.stop_together
                )
            generated = time.perf_counter()
            ended = (is_eos(rollout.response_ids, setup.codec.eos_ids) & rollout.response_mask).any(1)  # (B,)
            if r.mask_truncated_completions:  # rows cut at max_new_tokens get no policy loss
                rollout = replace(rollout, truncated=~ended)
            # 2. judge the completions (a completion without EOS loses reward.missing_eos_penalty)
            with hooks.phase("reward"):
                scores, components = reward(prompts, completions)
            if cfg.reward.missing_eos_penalty is not None:
                scores = missing_eos_penalty(scores, ended.cpu(), cfg.reward.missing_eos_penalty)
            rollout = replace(rollout, scores=scores.to(device))
            judged = time.perf_counter()
            # 3. old logprobs (GRPO: from the update's first epoch), reference logprobs, values (no gradients)
            rollout, entropy = score_rollout(
                setup, rollout, cfg, with_values=roles.critic is not None, with_logprobs=not from_update, hooks=hooks
            )
            scored = time.perf_counter()
            # 4. advantages: GAE over per-token rewards (PPO) or per-sequence baselines (RLOO, GRPO)
            kl_coef = kl_ctl.value
            rollout, adv_stats = algorithm.advantages(rollout, cfg, kl_coef, dist=dist)
            # 5. K epochs × M minibatches of the algorithm's loss (the clipped surrogate; + value loss with a critic)
            try:
                with hooks.phase("update"):
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
                "time/elapsed": finished - loop_began - eval_seconds,
                "perf/tokens_per_second": mask.sum().item() / (finished - started),
                **{f"reward/{name}": values.mean().item() for name, values in components.items()},
            }
            same_everywhere = {"step", "objective/kl_coef", "lr", *update_stats, *adv_stats}
            metrics = reduce_metrics(metrics, dist, mask.sum().item(), same_everywhere)
            if probe is not None and step % cfg.eval.every == 0:  # after this step's update; not in time/step
                metrics.update(probe(step))
                eval_seconds += metrics.get("time/eval", 0.0)
            target = cfg.eval.stop_share
            reached = dist.any(target is not None and metrics.get("eval/positive_share", -1.0) >= target)
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
            if reached and step < t.steps:
                if dist.is_main:
                    share = metrics["eval/positive_share"]
                    print(
                        f"held-out positive share {share:.1%} >= eval.stop_share {target:.1%} at step {step}: stopping"
                    )
                break
    trackers.close()
    if dist.is_main:  # rank 0 alone writes the adapters, evaluates and reports
        roles.save(run_dir / "final")
        print(f"training done: adapters in {run_dir / 'final'}; metrics in {run_dir / 'metrics.jsonl'}")
    if cfg.eval.enabled and (dist.is_main or roles.sharded):  # a sharded model's forwards need every process
        from rlhflab.evaluate import evaluate_run

        last = probe.result_at(step) if probe is not None and start_step < t.steps else None  # no re-sampling
        evaluate_run(run_dir, cfg, setup, reward, main_process=dist.is_main, after=last)
    if not dist.is_main:
        return run_dir
    from rlhflab.report import write_outputs

    write_outputs(run_dir)  # report.md/.html + plots/, final/README.md; never raises
    return run_dir


def samples_due(step: int, every: int, last_step: int) -> bool:
    """A sample table at the first step, every ``every`` steps and the last step (never when every = 0)."""
    return every > 0 and (step == 1 or step % every == 0 or step == last_step)
