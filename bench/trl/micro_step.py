"""One PPO micro-step of each library on the same weights, timed interleaved in one process.

    /work/trl-venv/bin/python bench/trl/micro_step.py --shape pythia-410m --rows 2 --repeats 5

A micro-step = policy forward + backward and critic forward + backward on `--rows` rows of 10-word prompts + 48
response tokens, with random advantages and returns: rlhflab's `ppo_micro_step` on its shared roles, and TRL 1.11's
`PolicyAndValueWrapper` (policy with the PEFT adapter, value model = a second copy with LoRA on query_key_value)
followed by TRL's clipped policy loss + value loss and one backward. Dropout is off on both sides, as in both
trainers. Prints the median and every time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import LORA_TARGETS, build_assets, value_model
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM
from trl.experimental.ppo.ppo_trainer import PolicyAndValueWrapper
from trl.experimental.ppo.ppo_trainer import forward as trl_forward
from trl.trainer.utils import disable_dropout_in_model, selective_log_softmax

from rlhflab.algorithms.ppo import ppo_micro_step
from rlhflab.batch import Rollout
from rlhflab.bench import BenchOptions, bench_config
from rlhflab.rollout import response_mask, tokenize_prompts
from rlhflab.session import load_setup

RESPONSE = 48


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="tiny", choices=["tiny", "pythia-410m"])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--workdir", default=None)
    args = p.parse_args()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="micro-step-"))
    model_dir, prompts = build_assets(args.shape, workdir)
    opts = BenchOptions(model_shape=args.shape)
    cfg = bench_config(opts, model_dir, workdir / "prompts.txt", "shared", workdir / "run")
    setup = load_setup(cfg)
    setup.roles.set_dropout(False)

    g = torch.Generator().manual_seed(0)
    ids, mask = tokenize_prompts(setup.tokenizer, prompts[: args.rows], 32, setup.device)
    response = torch.randint(2, len(setup.tokenizer) - 1, (args.rows, RESPONSE), generator=g)
    rollout = Rollout(ids, mask, response, response_mask(response, setup.tokenizer.eos_token_id))
    rollout.logprobs = torch.randn(args.rows, RESPONSE, generator=g) - 5
    rollout.values, rollout.advantages, rollout.returns = torch.randn(3, args.rows, RESPONSE, generator=g)
    num_tokens = rollout.response_mask.sum()

    def ours():
        ppo_micro_step(setup.roles, rollout, cfg, num_tokens, args.rows, cfg.algorithm.kl_coef)

    policy = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
    )
    pad = setup.tokenizer.pad_token_id
    critic = value_model(model_dir, pad)
    disable_dropout_in_model(policy)
    disable_dropout_in_model(critic)
    wrapper = PolicyAndValueWrapper(policy, critic).train()
    query_responses = torch.where(rollout.attention_mask, rollout.input_ids, pad)
    context = ids.shape[1]

    def trl():  # the body of TRL's PPO micro-batch loop, losses as in PPOTrainer.train
        output, value_logits = trl_forward(wrapper, query_responses, pad)
        logits = output.logits[:, context - 1 : -1] / (1.0 + 1e-7)
        ratio = torch.exp(selective_log_softmax(logits, response) - rollout.logprobs)
        advantages = rollout.advantages
        pg_loss = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 0.8, 1.2)).mean()
        vf_loss = 0.5 * ((value_logits[:, context - 1 : -1].squeeze(-1) - rollout.returns) ** 2).mean()
        (pg_loss + 0.5 * vf_loss).backward()

    steps = {"rlhflab": ours, "trl": trl}
    for step in steps.values():
        step(), step()  # warm-up
    times = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    print(f"{args.shape}, {args.rows} rows x {ids.shape[1] + RESPONSE} tokens, {torch.get_num_threads()} threads")
    for name, values in times.items():
        each = ", ".join(f"{v:.3f}" for v in values)
        print(f"{name}: median {statistics.median(values):.3f} s per micro-step ({each})")


if __name__ == "__main__":
    main()
