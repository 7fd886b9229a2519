"""TRL 1.16's GRPOTrainer / RLOOTrainer until the held-out positive share reaches a target (bench/to_target.py).

    /work/trl-venv/bin/python bench/trl/to_target.py --preset demo-grpo --algo grpo --settings defaults --json t.json

The task is an rlhflab preset's, read through rlhflab's own code (imported from this checkout's src/): the same
model directory, training prompts (in the same order: TRL shuffles with its own seed), reward (rlhflab's reward
stack, shaping terms included, as one TRL reward function), held-out prompts × samples, completion length,
temperature and judge verdict (the reward's first judge, e.g. VADER compound > 0.05).

``--settings defaults``: TRL's own defaults (full fine-tuning, learning rate 1e-6, its group size and batch);
only the completion length and the sampling temperature are the task's. ``--settings rlhflab``: the preset's
algorithm settings mapped onto TRL's (LoRA r/alpha on the same modules, lr and schedule, k, completions per
generation, minibatches → optimiser steps per generation, epochs → num_iterations, β, clip, dropout off).

Held-out evaluation: after every ``--eval-every-samples`` sampled completions (at the end of a generation batch's
optimiser steps), the policy samples the held-out prompts (HF generate, the preset's temperature and length, its own
RNG stream so training is not disturbed) and the judge's verdicts give the positive share. Evaluation time is kept
out of the training wall-clock, as rlhflab's eval.every keeps it out of time/step. The run stops at the target or at
``--max-seconds`` of training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from peft import LoraConfig  # noqa: E402
from transformers import AutoModelForCausalLM, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer  # noqa: E402

from rlhflab.config import build_config  # noqa: E402
from rlhflab.data.prompts import read_prompts  # noqa: E402
from rlhflab.evaluate import judge_verdicts  # noqa: E402
from rlhflab.models.loading import hidden_size, load_tokenizer, lora_targets, resolve_dtype  # noqa: E402
from rlhflab.rewards import build_reward  # noqa: E402
from rlhflab.session import extra_prompts, held_out_prompts, resolve_sources, with_extra_prompts  # noqa: E402

CPU = torch.device("cpu")


def task(preset: str, overrides: list[str]):
    """(config, model dir, training prompts, held-out prompts) exactly as rlhflab's load_setup reads them."""
    cfg = build_config(preset=preset, overrides=overrides)
    model_dir, train_file, eval_file = resolve_sources(cfg)
    train = with_extra_prompts(read_prompts(train_file)[: cfg.data.max_prompts or None], extra_prompts(cfg))
    held_out = held_out_prompts(cfg, train, eval_file)[: cfg.eval.max_prompts]
    return cfg, model_dir, train, held_out


class HeldOutTarget(TrainerCallback):
    """Evaluates every ``every`` sampled completions; stops training at the target or the time cap."""

    def __init__(self, model, tok, cfg, prompts, counter, every, per_generation, target, max_seconds):
        self.model, self.tok, self.cfg, self.counter = model, tok, cfg, counter
        self.prompts = [p for p in prompts for _ in range(cfg.eval.samples_per_prompt)]
        self.name, self.judge, self.threshold = judge_verdicts(cfg.reward.components)[0]
        self.every, self.per_generation, self.target, self.max_seconds = every, per_generation, target, max_seconds
        self.next_eval, self.eval_seconds, self.started, self.curve, self.reached = every, 0.0, None, [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def train_seconds(self) -> float:
        return time.perf_counter() - self.started - self.eval_seconds

    @torch.no_grad()
    def positive_share(self) -> float:
        cfg, tok, model = self.cfg, self.tok, self.model
        was_training = model.training
        model.eval()
        completions = []
        batch = cfg.eval.batch_size or cfg.rollout.batch_size
        with torch.random.fork_rng():  # its own stream: training samples what it would have without evaluations
            torch.manual_seed(cfg.seed + 7)
            for start in range(0, len(self.prompts), batch):
                chunk = self.prompts[start : start + batch]
                enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=cfg.rollout.temperature,
                    top_p=cfg.rollout.top_p,
                    top_k=0,
                    max_new_tokens=cfg.rollout.max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                )
                completions += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        model.train(was_training)
        verdicts = [v > self.threshold for v in self.judge(self.prompts, completions)]
        return sum(verdicts) / len(verdicts)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.per_generation or self.counter["samples"] < self.next_eval:
            return  # evaluate only once a generation batch has had all its optimiser steps
        train_seconds = self.train_seconds()
        began = time.perf_counter()
        share = self.positive_share()
        self.eval_seconds += time.perf_counter() - began
        self.next_eval += self.every
        point = {"samples": self.counter["samples"], "train_seconds": train_seconds, "positive_share": share}
        self.curve.append(point)
        print(f"[to-target] {json.dumps(point)}", flush=True)
        if share >= self.target and self.reached is None:
            self.reached = point
            control.should_training_stop = True
        if train_seconds > self.max_seconds:
            control.should_training_stop = True


def trl_config(algo: str, settings: str, cfg, out: Path, bf16: bool):
    r, a, t = cfg.rollout, cfg.algorithm, cfg.train
    common = dict(
        output_dir=str(out),
        max_completion_length=r.max_new_tokens,
        temperature=r.temperature,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        use_cpu=True,
        bf16=bf16,  # TRL's own mixed precision (CPU autocast), on bf16 weights
        seed=cfg.seed,
    )
    if settings == "rlhflab":
        minibatch = r.batch_size // a.num_minibatches
        micro = min(t.micro_batch_size, minibatch)
        updates = t.steps * a.ppo_epochs * a.num_minibatches
        common.update(
            num_generations=r.samples_per_prompt,
            generation_batch_size=r.batch_size,
            per_device_train_batch_size=micro,
            gradient_accumulation_steps=minibatch // micro,
            num_iterations=a.ppo_epochs,
            learning_rate=t.lr,
            lr_scheduler_type={"cosine": "cosine", "constant": "constant_with_warmup"}[t.lr_schedule],
            warmup_steps=int(t.warmup_ratio * updates),
            max_steps=updates,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            beta=a.kl_coef,
            epsilon=a.clip_eps,
            top_p=r.top_p,
            disable_dropout=not t.dropout,
        )
    if algo == "grpo":
        extra = dict(scale_rewards="group" if a.group_scale else "none") if settings == "rlhflab" else {}
        return GRPOConfig(**common, **extra), GRPOTrainer
    extra = dict(normalize_advantages=a.whitens()) if settings == "rlhflab" else {}
    return RLOOConfig(**common, **extra), RLOOTrainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, help="the rlhflab preset whose task TRL trains on")
    p.add_argument("--set", action="append", default=[], help="rlhflab overrides of the preset (key=value)")
    p.add_argument("--algo", default="grpo", choices=["grpo", "rloo"])
    p.add_argument("--settings", default="defaults", choices=["defaults", "rlhflab"])
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--eval-every-samples", type=int, default=64)
    p.add_argument("--max-seconds", type=float, default=1800.0, help="training wall-clock cap (eval excluded)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"], help="auto: what the preset resolves")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg, model_dir, train_prompts, eval_prompts = task(args.preset, args.set)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"trl-target-{args.algo}-"))
    tok = load_tokenizer(model_dir)
    dtype = resolve_dtype(args.dtype if args.dtype != "auto" else cfg.model.dtype, CPU, hidden_size(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    config, trainer_cls = trl_config(args.algo, args.settings, cfg, workdir / "out", dtype == torch.bfloat16)
    peft = None
    if args.settings == "rlhflab":
        targets = lora_targets(model, cfg.lora.target_modules, "lora.target_modules")
        peft = LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets
        )
    if cfg.reward.missing_eos_penalty is not None:
        raise SystemExit("reward.missing_eos_penalty: not mapped onto TRL here; run a preset without it")
    reward = build_reward(cfg.reward)
    counter = {"samples": 0}

    def reward_fn(prompts, completions, **kwargs) -> list[float]:
        counter["samples"] += len(completions)
        return reward(prompts, completions)[0].tolist()

    reward_fn.__name__ = "rlhflab_reward"
    dataset = Dataset.from_dict({"prompt": train_prompts})  # max_steps (or TRL's 3 epochs) repeats it as needed
    # optimiser steps per generation batch (TRL counts steps_per_generation in micro-batches)
    per_generation = config.steps_per_generation // config.gradient_accumulation_steps * config.num_iterations
    every = max(args.eval_every_samples, config.generation_batch_size)
    trainer = trainer_cls(
        model=model, reward_funcs=reward_fn, args=config, train_dataset=dataset, processing_class=tok, peft_config=peft
    )
    probe = HeldOutTarget(
        trainer.model, tok, cfg, eval_prompts, counter, every, per_generation, args.target, args.max_seconds
    )
    trainer.add_callback(probe)
    began = time.perf_counter()
    start_share = probe.positive_share()
    eval0 = time.perf_counter() - began
    trainer.train()
    out = {
        "library": "TRL 1.16",
        "trainer": trainer_cls.__name__,
        "preset": args.preset,
        "settings": args.settings,
        "target": args.target,
        "start_positive_share": start_share,
        "start_eval_seconds": eval0,
        "reached": probe.reached,
        "curve": probe.curve,
        "train_seconds": probe.train_seconds(),
        "eval_seconds": probe.eval_seconds,
        "samples": counter["samples"],
        "config": {
            k: getattr(config, k)
            for k in (
                "learning_rate",
                "num_generations",
                "generation_batch_size",
                "per_device_train_batch_size",
                "gradient_accumulation_steps",
                "num_iterations",
                "beta",
                "max_completion_length",
            )
        },
        "peft": args.settings == "rlhflab",
        "dtype": str(dtype).removeprefix("torch."),
    }
    print(f"[to-target] result {json.dumps({k: out[k] for k in ('trainer', 'settings', 'reached', 'samples')})}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
