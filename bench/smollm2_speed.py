"""Where a step's seconds go on SmolLM2-135M: generation (policy with LoRA vs the bare base), scoring, sampling.

    OMP_WAIT_POLICY=PASSIVE python bench/smollm2_speed.py [--rows 16] [--tokens 24] [--dtype auto|fp32|bf16]

Loads the model as `rlhflab train --preset smollm2-grpo` does (the cached folder, LoRA on every projection) and
prints seconds per call (best of --repeat) for: generate with the policy, generate with adapters off (the
reference), a decode step's sampling (torch.multinomial vs rlhflab's inverse CDF over the vocabulary), and one
scoring pass of the policy's log-probs. Numbers go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from rlhflab.config import build_config
from rlhflab.models.forward import response_logprobs
from rlhflab.rollout import sample_categorical, sample_rollout
from rlhflab.session import load_setup


def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=16)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--preset", default="smollm2-grpo")
    args = p.parse_args()
    cfg = build_config(
        preset=args.preset, overrides=[f"model.dtype={args.dtype}", f"rollout.max_new_tokens={args.tokens}"]
    )
    setup = load_setup(cfg)
    dtype = next(setup.roles.policy.parameters()).dtype
    prompts = (setup.train_prompts * args.rows)[: args.rows]
    print(f"SmolLM2-135M, {dtype}, {args.rows} rows x {args.tokens} new tokens, {torch.get_num_threads()} threads")
    gen = torch.Generator().manual_seed(0)
    holder = {}

    def policy_generate():
        holder["rollout"], _ = sample_rollout(setup.roles.actor(), setup.codec, prompts, cfg, gen, setup.device)

    def reference_generate():
        with setup.roles.reference_model() as model:
            sample_rollout(model, setup.codec, prompts, cfg, gen, setup.device)

    with torch.no_grad():
        t_policy = best_of(args.repeat, policy_generate)
        t_reference = best_of(args.repeat, reference_generate)
        rollout = holder["rollout"]
        t_score = best_of(args.repeat, lambda: response_logprobs(setup.roles.actor(), rollout, 1.0))
        probs = torch.randn(args.rows, len(setup.tokenizer)).mul(3).softmax(-1)
        t_multinomial = best_of(20, lambda: torch.multinomial(probs, 1, generator=gen))
        t_inverse = best_of(20, lambda: sample_categorical(probs, gen))
    steps = rollout.response_ids.shape[1]
    print(f"generate, policy (LoRA)    {t_policy:7.2f} s  ({t_policy / steps * 1e3:.0f} ms a token step)")
    print(f"generate, adapters off     {t_reference:7.2f} s  ({t_reference / steps * 1e3:.0f} ms a token step)")
    print(f"score policy log-probs     {t_score:7.2f} s")
    print(f"sample a token: multinomial {t_multinomial * 1e3:6.1f} ms, inverse CDF {t_inverse * 1e3:6.1f} ms")


if __name__ == "__main__":
    main()
