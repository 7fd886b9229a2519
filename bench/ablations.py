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

from rlhflab.batch import Rollout
from rlhflab.bench import BenchOptions, bench_config, build_model_dir, write_prompts
from rlhflab.models.forward import position_ids, response_logprobs
from rlhflab.rollout import generate as sample
from rlhflab.rollout import response_mask, tokenize_prompts
from rlhflab.session import load_setup


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

    def generate(reserved_cache):
        eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
        sample(actor, ids, mask, 48, eos, pad, generator, reserved_cache=reserved_cache)

    response = torch.randint(2, len(tokenizer) - 1, (16, 48), generator=generator)
    rollout = Rollout(ids, mask, response, response_mask(response, tokenizer.eos_token_id))

    def scoring_pass(rows_per_pass):
        with torch.no_grad():
            for chunk in rollout.chunks(rows_per_pass):
                response_logprobs(actor, chunk, 1.0, with_entropy=True, rows_at_once=2)

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
        "generate: reserved KV cache / DynamicCache": (lambda: generate(True), lambda: generate(False)),
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
