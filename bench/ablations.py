"""Before/after timings of single optimisations, interleaved in one process so machine drift hits both sides.

    python bench/ablations.py --model-shape pythia-410m --repeats 3

Each pair runs the same work with the optimisation on and off, alternating, and prints the median seconds:
- generation (16 prompts x 48 new tokens) with rlhflab's reserved KV cache vs transformers' DynamicCache;
- one no-grad scoring pass (old logprobs + entropy) over 16 rows: 8 rows per forward vs 2 (train.scoring_batch_size);
- the same pass with and without a KV cache being built (use_cache).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import rlhflab.rollout as rollout_module
from rlhflab.bench import BenchOptions, bench_config, build_model_dir, write_prompts
from rlhflab.rollout import Rollout, position_ids, response_mask
from rlhflab.train import load_setup, tokenize_prompts


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-shape", default="tiny", choices=["tiny", "pythia-410m"])
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlhflab-ablations-"))
    opts = BenchOptions(model_shape=args.model_shape)
    model_dir = build_model_dir(opts, work / "model")
    prompts_file = write_prompts(work / "prompts.txt")
    cfg = bench_config(opts, model_dir, prompts_file, "shared", work / "run")
    setup = load_setup(cfg)
    actor, tokenizer = setup.roles.actor(), setup.tokenizer
    ids, mask = tokenize_prompts(tokenizer, prompts_file.read_text().splitlines()[:16], 32, setup.device)
    generator = torch.Generator().manual_seed(0)
    reserved, plain = rollout_module.kv_cache, lambda capacity: rollout_module.DynamicCache()

    def generate(cache):
        rollout_module.kv_cache = cache
        rollout_module.generate(actor, ids, mask, 48, tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        rollout_module.kv_cache = reserved

    response = torch.randint(2, len(tokenizer) - 1, (16, 48), generator=generator)
    rollout = Rollout(ids, mask, response, response_mask(response, tokenizer.eos_token_id))

    def scoring_pass(rows_per_pass):
        with torch.no_grad():
            for chunk in rollout.chunks(rows_per_pass):
                rollout_module.response_logprobs(actor, chunk, 1.0, with_entropy=True, rows_at_once=2)

    def with_cache(use_cache):
        m = rollout.attention_mask
        with torch.no_grad():
            for chunk_ids, chunk_mask in zip(rollout.input_ids.split(8), m.split(8)):
                actor(
                    input_ids=chunk_ids,
                    attention_mask=chunk_mask.long(),
                    position_ids=position_ids(chunk_mask),
                    logits_to_keep=49,
                    use_cache=use_cache,
                )

    pairs = {
        "generate: reserved KV cache / DynamicCache": (lambda: generate(reserved), lambda: generate(plain)),
        "scoring: 8 rows per pass / 2": (lambda: scoring_pass(8), lambda: scoring_pass(2)),
        "scoring pass: use_cache=False / True": (lambda: with_cache(False), lambda: with_cache(True)),
    }
    for name, (after, before) in pairs.items():
        after(), before()  # warm-up
        a, b = [], []
        for _ in range(args.repeats):
            a.append(timed(after))
            b.append(timed(before))
        a_med, b_med = statistics.median(a), statistics.median(b)
        print(f"{name}: {a_med:.3f} s vs {b_med:.3f} s (median of {args.repeats}; ratio {a_med / b_med:.2f})")


if __name__ == "__main__":
    main()
