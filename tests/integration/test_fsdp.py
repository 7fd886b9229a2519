"""FSDP2 (``distributed.fsdp``) on CPU with 2 Gloo processes: the base weights are sharded, and the scoring passes,
the gradient and the optimiser update equal one process's on the same rollouts; generation through the sharded
model matches and never lets the processes run different numbers of forward passes; a torchrun run logs each step
once, gives a standard PEFT ``final/``, and resumes exactly."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import train_argv
from safetensors.torch import load_file
from test_distributed import case_config, fixed_rollout, metrics, own_rollout, pad_cat, run_two_processes, torchrun

from rlhflab import distributed
from rlhflab.batch import Rollout
from rlhflab.config import build_config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.errors import UserError
from rlhflab.rollout import generate

WORLD = 2
FSDP = "distributed.fsdp=true"
# PPO (policy + critic adapters, value head, GAE, whitening) and RLOO (global batch_mean baseline)
CASES = [
    ("ppo", ["algorithm.loss_agg=token_mean"]),
    ("ppo-reference-critic", ["algorithm.loss_agg=token_mean", "critic.backbone=reference", "critic.head=mlp"]),
    ("rloo", ["algorithm.name=rloo", "rollout.samples_per_prompt=2", "algorithm.rloo_baseline=batch_mean"]),
]
GEN_TOKENS = 8


def load(cfg, dist: Dist = SINGLE):
    """The setup of test_distributed.load_perturbed, built under ``dist`` (so sharded when the config says FSDP)."""
    from rlhflab.session import load_setup, seed_everything

    seed_everything(cfg.seed)
    setup = load_setup(cfg, dist=dist)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in setup.roles.trainable_parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return setup


def scale_adapters(setup, factor: float) -> None:
    with torch.no_grad():
        for p in setup.roles.trainable_parameters():
            p.mul_(factor)


def score_and_update(setup, rollout: Rollout, cfg, dist: Dist):
    """The scoring passes (at the halved weights the rollout was sampled with), then advantages and one
    optimiser update (gradient accumulation over micro-batches, all-reduce, clip, AdamW) as ``update.update``."""
    from rlhflab.algorithms.registry import algorithm_for
    from rlhflab.rollout import score_rollout
    from rlhflab.update import update

    scale_adapters(setup, 0.5)
    bare = replace(rollout, logprobs=None, ref_logprobs=None, values=None)
    scored, _ = score_rollout(setup, bare, cfg, with_values=setup.roles.critic is not None)
    scale_adapters(setup, 2.0)  # powers of two: exactly the perturbed weights again
    passes = [scored.logprobs, scored.ref_logprobs, scored.values]

    rollout, _ = algorithm_for(cfg).advantages(rollout, cfg, 0.05, dist=dist)
    params = setup.roles.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    skips = {"total": 0, "in_a_row": 0}
    gen = torch.Generator().manual_seed(0)
    stats, _ = update(setup, rollout, cfg, optimizer, scheduler, params, gen, skips, dist, kl_coef=0.05)
    return passes, [p.detach().clone() for p in params], stats


def greedy(setup, prompt: str, eos_id: int, stop_together=None) -> torch.Tensor:
    """(1, ≤ GEN_TOKENS) tokens sampled at temperature 1e-3 (greedy), stopping at ``eos_id``."""
    from rlhflab.rollout import tokenize_prompts

    ids, mask = tokenize_prompts(setup.tokenizer, [prompt], 16, setup.device)
    g = torch.Generator().manual_seed(0)
    pad = setup.tokenizer.pad_token_id
    return generate(setup.roles.actor(), ids, mask, GEN_TOKENS, eos_id, pad, g, 1e-3, stop_together=stop_together)[0]


def worker(rank: int, port: int, workdir: str, model_dir: str, prompts_file: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    dist = distributed.init(torch.device("cpu"))
    try:
        out = {}
        for name, overrides in CASES:
            cfg = case_config(model_dir, prompts_file, [*overrides, FSDP, "algorithm.num_minibatches=1"])
            setup = load(cfg, dist)
            roles = setup.roles
            assert roles.sharded and roles.stop_together is not None
            embedding = roles.policy.get_input_embeddings().weight  # a frozen base weight: this process's half
            out[f"{name}-shard"] = (type(embedding).__name__, embedding.to_local().shape, embedding.shape)
            assert all(type(p) is torch.nn.Parameter for p in roles.trainable_parameters())  # adapters: whole
            full = Rollout(**torch.load(Path(workdir) / f"{name}-rollout.pt"))
            n = len(full) // WORLD
            out[name] = score_and_update(setup, own_rollout(full.select(slice(rank * n, (rank + 1) * n))), cfg, dist)
            if name == "ppo":
                # rank 0 stops at its first token, rank 1 never (EOS -1): rank 0 keeps taking part in every pass
                first = greedy(setup, "the movie was", eos_id=-1)[0, 0].item()
                eos = first if rank == 0 else -1
                prompt = "the movie was" if rank == 0 else "i really hated"
                out["generated"] = greedy(setup, prompt, eos, roles.stop_together)
        torch.save(out, Path(workdir) / f"rank{rank}.pt")
    finally:
        dist.close()


def test_fsdp_two_processes_equal_one_process(tiny_model_dir, prompts_file, tmp_path):
    single = {}
    for name, overrides in CASES:
        cfg = case_config(tiny_model_dir, prompts_file, [*overrides, "algorithm.num_minibatches=1"])
        setup = load(cfg)
        rollout = fixed_rollout(setup, cfg, tmp_path / f"{name}-rollout.pt")
        setup = load(cfg)
        before = [p.detach().clone() for p in setup.roles.trainable_parameters()]
        single[name] = (rollout, *score_and_update(setup, rollout, cfg, SINGLE)[1:], before)
        if name == "ppo":
            expected = [greedy(setup, "the movie was", -1), greedy(setup, "i really hated", -1)]
            pad = setup.tokenizer.pad_token_id

    run_two_processes(worker, str(tmp_path), str(tiny_model_dir), str(prompts_file))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    for name, _ in CASES:
        rollout, params, stats, before = single[name]
        kinds, local, full = zip(*[out[f"{name}-shard"] for out in ranks])
        assert kinds == ("DTensor",) * WORLD and len(set(full)) == 1  # the base is sharded: each holds its rows
        assert local[0][0] + local[1][0] == full[0][0] and local[0][1:] == full[0][1:] and local[1][0] < full[0][0]
        width = rollout.response_ids.shape[1]
        for i, field in enumerate(["logprobs", "ref_logprobs", "values"]):  # policy, reference, critic passes
            if getattr(rollout, field) is None:
                continue
            together = pad_cat([out[name][0][i] for out in ranks], width)
            keep = rollout.response_mask
            torch.testing.assert_close(together[keep], getattr(rollout, field)[keep], rtol=0, atol=1e-5)
        for out in ranks:  # after one update every process holds the weights of one process's update
            for i, (a, b) in enumerate(zip(out[name][1], params)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"{name}: parameter {i} after the update")
            for key, value in stats.items():
                assert out[name][2][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)
        assert all((a - b).abs().max() > 1e-4 for a, b in zip(params, before))  # every parameter moved

    rank0, rank1 = ranks[0]["generated"], ranks[1]["generated"]
    assert rank1.shape == (1, GEN_TOKENS) and torch.equal(rank1, expected[1])  # KV-cached, through the shards
    assert rank0.shape == (1, GEN_TOKENS)  # ended after 1 token but ran every pass (padding after its EOS)
    assert rank0[0, 0] == expected[0][0, 0] and (rank0[0, 1:] == pad).all()


def test_fsdp_needs_torchrun_and_the_shared_layout(tiny_model_dir, prompts_file, tmp_path, capsys):
    from rlhflab.cli import main

    assert main(train_argv(tiny_model_dir, prompts_file, tmp_path / "run", "--set", FSDP, steps=1)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "distributed.fsdp: shards the base model over torchrun processes" in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="distributed.fsdp: needs model.roles=shared"):
        build_config(overrides=[FSDP, "model.roles=separate"])


def test_torchrun_fsdp_logs_once_saves_peft_adapters_and_resumes(tiny_model_dir, prompts_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sets = ["train.lr=5e-3", "algorithm.ppo_epochs=2", "checkpoint.every=1", "checkpoint.keep=10"]
    sets += ["eval.max_prompts=2", "rollout.batch_size=4", "train.micro_batch_size=2", "rollout.max_new_tokens=5"]
    runs = {}
    for name, extra in (("dp", []), ("fsdp", [FSDP])):
        runs[name] = tmp_path / name
        argv = train_argv(tiny_model_dir, prompts_file, runs[name], *[a for v in sets + extra for a in ("--set", v)])
        done = torchrun(*argv, module=True)
        assert done.returncode == 0, done.stderr[-3000:]
    run = runs["fsdp"]
    rows = metrics(run)
    assert [m["step"] for m in rows] == [1, 2]
    assert "base weights sharded with FSDP2" in (run / "config.yaml").read_text()
    assert json.loads((run / "eval" / "summary.json").read_text())["after"]["num_samples"] == 2
    # sharding changes where the base weights live, not the numbers: the plain data-parallel run's metrics
    for a, b in zip(rows, metrics(runs["dp"])):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key

    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert final.keys() == load_file(str(runs["dp"] / "final" / "adapter_model.safetensors")).keys()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run / "final"))
    loaded = {n: p for n, p in policy.named_parameters() if "lora_" in n}
    assert len(loaded) == len(final) and any(p.abs().sum() > 0 for n, p in loaded.items() if "lora_B" in n)

    # resume from the step-1 checkpoint: step 2 and the final adapters come out the same
    shutil.rmtree(run / "final")
    done = torchrun("train", "--resume", "--output-dir", str(run), module=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("resuming") == 1
    assert metrics(run) == rows
    again = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert all(torch.equal(final[k], again[k]) for k in final)
