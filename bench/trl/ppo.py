"""TRL 1.11's PPOTrainer (trl.experimental.ppo, the last release that has one) at rlhflab bench's PPO settings.

    /work/trl-venv/bin/python bench/trl/ppo.py --shape tiny --steps 2 --json trl-ppo-tiny.json

Settings (rlhflab's imdb-pythia-410m-ppo preset, as `rlhflab bench` runs it): 16 prompts of 10 words per step, 48
new tokens, temperature 1, 4 PPO epochs over 1 minibatch of 16 in micro-batches of 2 (gradient accumulation 8),
lr 3e-5, KL β 0.05 (k1), clip 0.2, value clip 0.2, vf_coef 0.5, γ 1, λ 0.95, fp32 on CPU. Policy: LoRA r 16,
α 32 on query_key_value, dense, dense_h_to_4h, dense_4h_to_h; reference: the same base with the adapter disabled
(TRL's PEFT path); critic: a second copy of the base (TRL's PPOTrainer needs a separate value model) with LoRA
r 16 on query_key_value and a trainable score head, base frozen, as rlhflab's critic. Reward: VADER compound on the
completion, fed in through TRL's reward-model call (TRL's PPO only takes a model; see VaderRewardModel).
Generation runs over the whole batch of 16 (local_rollout_forward_batch_size 16), as rlhflab's does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import trl.experimental.ppo.ppo_trainer as ppo_module
from common import (
    DTYPES,
    LORA_TARGETS,
    RUN_ARGS,
    StepTimer,
    build_assets,
    load_tokenizer,
    peak_rss_bytes,
    report,
    vader,
    value_model,
)
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl.experimental.ppo import PPOConfig, PPOTrainer


class VaderRewardModel(torch.nn.Module):
    """Stands where TRL wants a reward model; get_reward is patched to decode and score with VADER instead."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)


def patch_get_reward():
    original = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if not isinstance(model, VaderRewardModel):
            return original(model, query_responses, pad_token_id, context_length)
        texts = model.tokenizer.batch_decode(query_responses[:, context_length:], skip_special_tokens=True)
        return None, torch.tensor(vader(texts), dtype=torch.float32, device=query_responses.device), None

    ppo_module.get_reward = get_reward


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="tiny", choices=["tiny", "pythia-410m"])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--micro", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where the model is built (default: a temporary folder)")
    p.add_argument("--json", default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: the first GPU")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"], help="the weights' dtype (LoRA stays fp32)")
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="trl-ppo-"))
    model_dir, prompts = build_assets(args.shape, workdir, args.dtype)
    tok = load_tokenizer(model_dir)
    torch.manual_seed(42)

    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=DTYPES[args.dtype])
    critic = value_model(model_dir, tok.pad_token_id, DTYPES[args.dtype])

    n_prompts = args.batch * (args.steps + 1)
    dataset = Dataset.from_dict({"input_ids": [tok(prompts[i % len(prompts)])["input_ids"] for i in range(n_prompts)]})
    config = PPOConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro,
        num_mini_batches=1,
        num_ppo_epochs=4,
        total_episodes=args.batch * args.steps,
        local_rollout_forward_batch_size=args.batch,
        response_length=48,
        stop_token="eos",
        temperature=1.0,
        learning_rate=3e-5,
        lr_scheduler_type="cosine",
        kl_coef=0.05,
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=0.5,
        gamma=1.0,
        lam=0.95,
        whiten_rewards=False,
        num_sample_generations=0,
        missing_eos_penalty=None,
        **{**RUN_ARGS, "use_cpu": args.device == "cpu"},
    )
    patch_get_reward()
    timer = StepTimer()
    trainer = PPOTrainer(
        args=config,
        processing_class=tok,
        model=policy,
        ref_model=None,
        reward_model=VaderRewardModel(tok),
        train_dataset=dataset,
        value_model=critic,
        peft_config=LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"
        ),
        callbacks=[timer],
    )
    trainer.train()
    settings = {
        "device": args.device,
        "dtype": args.dtype,
        "shape": args.shape,
        "batch": args.batch,
        "micro": args.micro,
        "new_tokens": 48,
        "ppo_epochs": 4,
    }
    report("trl-1.11 PPOTrainer", settings, timer.times, peak_rss_bytes(), args.json)


if __name__ == "__main__":
    main()
