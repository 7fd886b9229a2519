"""TRL 1.11's RLOOTrainer / GRPOTrainer at rlhflab bench's RLOO / GRPO settings.

    /work/trl-venv/bin/python bench/trl/group.py --algo grpo --shape tiny --steps 2 --json trl-grpo-tiny.json

Settings (rlhflab's imdb-pythia-410m-{rloo,grpo} presets, as `rlhflab bench --algo rloo|grpo` runs them): 32
completions of up to 48 new tokens per rollout step = 8 prompts of 10 words × 4 samples, temperature 1, reused for
4 optimiser steps (TRL: num_iterations 4; rlhflab: ppo_epochs 4), each over all 32 in micro-batches of 2 (TRL:
per_device_train_batch_size 2 × gradient_accumulation_steps 16), lr 3e-5, β 0.05, clip 0.2, fp32 on CPU, dropout
off. Policy: LoRA r 16, α 32 on query_key_value, dense, dense_h_to_4h, dense_4h_to_h; reference: the base with the
adapter disabled. Reward: VADER compound on the completion, as a TRL reward function.

One rollout step = generation + scoring + 4 optimiser steps, so TRL's per-optimiser-step times are summed in 4s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import LORA_TARGETS, RUN_ARGS, StepTimer, build_assets, load_tokenizer, peak_rss_bytes, report, vader
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

ITERATIONS = 4


def vader_reward(completions, **kwargs) -> list[float]:
    return vader(completions)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--algo", default="grpo", choices=["rloo", "grpo"])
    p.add_argument("--shape", default="tiny", choices=["tiny", "pythia-410m"])
    p.add_argument("--steps", type=int, default=2, help="rollout steps (each = 4 optimiser steps)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--workdir", default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the first GPU, still fp32")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"trl-{args.algo}-"))
    model_dir, prompts = build_assets(args.shape, workdir)
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_prompts = args.batch // args.k * (args.steps + 1)
    dataset = Dataset.from_dict({"prompt": prompts[:n_prompts]})
    common = dict(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro,
        num_generations=args.k,
        max_completion_length=48,
        temperature=1.0,
        top_p=1.0,
        num_iterations=ITERATIONS,
        beta=0.05,
        epsilon=0.2,
        learning_rate=3e-5,
        lr_scheduler_type="cosine",
        max_steps=args.steps * ITERATIONS,
        disable_dropout=True,
        **{**RUN_ARGS, "use_cpu": args.device == "cpu"},
    )
    if args.algo == "grpo":
        config, trainer_cls = GRPOConfig(**common, loss_type="dapo", scale_rewards="group"), GRPOTrainer
    else:
        config, trainer_cls = RLOOConfig(**common, normalize_advantages=False), RLOOTrainer
    timer = StepTimer()
    trainer = trainer_cls(
        model=model,
        reward_funcs=vader_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tok,
        callbacks=[timer],
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
        ),
    )
    trainer.train()
    per_rollout = [sum(timer.times[i : i + ITERATIONS]) for i in range(0, len(timer.times), ITERATIONS)]
    settings = {
        "device": args.device,
        "shape": args.shape,
        "batch": args.batch,
        "k": args.k,
        "micro": args.micro,
        "new_tokens": 48,
    }
    report(f"trl-1.11 {trainer_cls.__name__}", settings, per_rollout, peak_rss_bytes(), args.json)


if __name__ == "__main__":
    main()
