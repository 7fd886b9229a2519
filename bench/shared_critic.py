"""PPO's scoring passes and update with a critic adapter of its own vs on the policy's trunk vs on the frozen
reference's (``critic.backbone`` separate / shared / reference), interleaved.

    OMP_WAIT_POLICY=PASSIVE python bench/shared_critic.py --model smollm2 [--repeat 3]
    OMP_WAIT_POLICY=PASSIVE python bench/shared_critic.py --model pythia-410m [--pythia-dir DIR]

Every layout (``--backbones``, default ``separate,shared,reference``; ``reference`` with ``critic.head: mlp``, the
head it is meant for) is built in one process, on the same base weights, and scores and updates the same rollout
(sampled once, by the first), alternating: A B C A B C ... so that a loaded machine slows all alike. smollm2: the
``smollm2-ppo`` preset (32 completions × 24 tokens, 2 epochs × 2 minibatches, micro-batches of 8). pythia-410m:
``rlhflab bench``'s PPO config at that shape, random weights (16 × 48 tokens, 4 epochs, micro-batches of 2).
Prints the median seconds of the scoring passes (old log-probs, reference log-probs, values) and of the update
(K epochs × M minibatches, forward + backward + optimiser), and their ratios to the first layout's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from rlhflab.algorithms.ppo import ppo_advantages
from rlhflab.config import build_config
from rlhflab.rollout import sample_rollout, score_rollout
from rlhflab.schedule import build_scheduler
from rlhflab.session import load_setup
from rlhflab.update import update


def overrides(backbone: str) -> list[str]:
    return [f"critic.backbone={backbone}"] + (["critic.head=mlp"] if backbone == "reference" else [])


def configs(args, work: Path) -> dict:
    """backbone → Config of the chosen model."""
    backbones = args.backbones.split(",")
    if args.model == "smollm2":
        return {b: build_config("smollm2-ppo", overrides=overrides(b)) for b in backbones}
    from rlhflab.bench import BenchOptions, bench_config, build_model_dir, write_prompts

    opts = BenchOptions(model_shape="pythia-410m", pythia_dir=args.pythia_dir)
    model_dir = build_model_dir(opts, work / "model")
    prompts = write_prompts(work / "prompts.txt")
    return {
        b: bench_config(replace(opts, overrides=overrides(b)), model_dir, prompts, "shared", work / b)
        for b in backbones
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=["smollm2", "pythia-410m"], default="smollm2")
    p.add_argument("--repeat", type=int, default=3, help="timed rounds per layout (after one untimed)")
    p.add_argument("--pythia-dir", help="Pythia-410m's config.json + tokenizer (see rlhflab bench)")
    p.add_argument("--backbones", default="separate,shared,reference", help="critic.backbone values, first = baseline")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfgs = configs(args, Path(tmp))
        setups = {}
        for backbone, cfg in cfgs.items():
            torch.manual_seed(cfg.seed)  # the same policy LoRA initialisation in both
            setups[backbone] = load_setup(cfg)
        baseline = next(iter(cfgs))
        cfg, setup = cfgs[baseline], setups[baseline]
        r = cfg.rollout
        prompts = setup.train_prompts[: r.batch_size]
        generator = torch.Generator().manual_seed(0)
        rollout, _ = sample_rollout(setup.roles.actor(), setup.codec, prompts, cfg, generator, setup.device)
        rollout = replace(rollout, scores=torch.randn(len(rollout), generator=generator))
        print(f"{args.model}: {len(rollout)} completions × {rollout.response_ids.shape[1]} tokens")
        times = {b: {"score": [], "update": []} for b in cfgs}
        for round_ in range(args.repeat + 1):
            for backbone in cfgs:
                cfg, setup = cfgs[backbone], setups[backbone]
                params = setup.roles.trainable_parameters()
                optimizer = torch.optim.AdamW(params, lr=cfg.train.lr)
                a = cfg.algorithm
                scheduler = build_scheduler(optimizer, 0, a.ppo_epochs * a.num_minibatches, "constant")
                started = time.perf_counter()
                scored, _ = score_rollout(setup, rollout, cfg)
                scored, _ = ppo_advantages(scored, cfg, a.kl_coef)
                scored_at = time.perf_counter()
                skips = {"total": 0, "in_a_row": 0}
                shuffle = torch.Generator().manual_seed(1)
                update(setup, scored, cfg, optimizer, scheduler, params, shuffle, skips, kl_coef=a.kl_coef)
                done = time.perf_counter()
                if round_:  # the first round warms up both
                    times[backbone]["score"].append(scored_at - started)
                    times[backbone]["update"].append(done - scored_at)
                print(
                    f"round {round_} {backbone}: scoring {scored_at - started:.2f} s, update {done - scored_at:.2f} s"
                )
    median = {b: {k: statistics.median(v) for k, v in t.items()} for b, t in times.items()}
    print(f"\nmedian of {args.repeat} | scoring passes | update")
    for backbone, m in median.items():
        print(f"{backbone:9s} | {m['score']:.2f} s | {m['update']:.2f} s")
    for backbone in list(median)[1:]:
        ratio = {k: median[backbone][k] / median[baseline][k] for k in ("score", "update")}
        print(f"{backbone} / {baseline} | {ratio['score']:.3f} | {ratio['update']:.3f}")


if __name__ == "__main__":
    main()
