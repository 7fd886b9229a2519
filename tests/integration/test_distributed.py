"""Data parallelism on CPU with 2 Gloo processes: given the same rollouts, 2 processes compute the advantages and
the gradient of 1 process on the concatenated batch; torchrun runs log each step once and resume exactly."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import train_argv
from safetensors.torch import load_file

from rlhflab import distributed
from rlhflab.batch import Rollout
from rlhflab.config import build_config
from rlhflab.distributed import SINGLE, Dist
from rlhflab.errors import UserError
from rlhflab.ops import masked_var, masked_whiten

WORLD = 2
TESTS = Path(__file__).resolve().parents[1]

# (name, overrides): the PPO token critic with token_mean, a sequence critic with seq_mean, and RLOO with the
# global batch_mean baseline and Dr. GRPO's seq_sum_constant (whose length must be the global max length)
CASES = [
    ("ppo-token", ["algorithm.loss_agg=token_mean"]),
    ("ppo-seq", ["critic.granularity=sequence", "algorithm.loss_agg=seq_mean"]),
    (
        "rloo",
        [
            "algorithm.name=rloo",
            "rollout.samples_per_prompt=2",
            "algorithm.rloo_baseline=batch_mean",
            "algorithm.loss_agg=seq_sum_constant",
        ],
    ),
]


def case_config(model_dir, prompts_file, overrides):
    return build_config(
        overrides=[
            f"model.name={model_dir}",
            "model.device=cpu",
            "data.source=file",
            f"data.prompts_file={prompts_file}",
            "rollout.batch_size=8",
            "train.micro_batch_size=2",
            "rollout.max_new_tokens=8",
            *overrides,
        ]
    )


def load_perturbed(cfg):
    """The setup every process builds: same seed, then LoRA and value head moved off their (partly zero)
    initialisation so that every trainable parameter gets a gradient and the PPO ratio is not 1."""
    from rlhflab.session import load_setup, seed_everything

    seed_everything(cfg.seed)
    setup = load_setup(cfg)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in setup.roles.trainable_parameters():
            p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return setup


def own_rollout(rollout: Rollout) -> Rollout:
    """Rows as a process would have produced them alone: no all-padding prompt columns on the left, no
    response columns past its longest response."""
    keep_p = int(rollout.prompt_mask.any(0).long().argmax())
    width = int(rollout.response_mask.sum(1).max())
    t = rollout.response_ids.shape[1]
    cut = {}
    for f in fields(rollout):
        x = getattr(rollout, f.name)
        if x is None or x.dim() < 2:
            continue
        if f.name.startswith("prompt"):
            cut[f.name] = x[:, keep_p:]
        elif x.shape[1] == t:
            cut[f.name] = x[:, :width]
    return replace(rollout, **cut)


def gradient_step(setup, rollout, cfg, dist: Dist):
    """Advantages, then one minibatch's accumulated and all-reduced gradient, as ``update`` computes them."""
    from rlhflab.algorithms.registry import algorithm_for
    from rlhflab.update import accumulate_gradients

    rollout, _ = algorithm_for(cfg).advantages(rollout, cfg, 0.05, dist=dist)
    params = setup.roles.trainable_parameters()
    for p in params:
        p.grad = None
    totals: dict[str, float] = {}
    num_tokens = dist.sum(rollout.response_mask.sum())
    finite = accumulate_gradients(setup, rollout, cfg, num_tokens, len(rollout) * dist.world_size, 0.05, totals)
    assert dist.all_reduce_gradients(params, finite)
    return rollout.advantages, [p.grad.clone() for p in params], dist.sum_values(totals)


def whitening_inputs():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 7, generator=g)
    lengths = torch.tensor([7, 2, 5, 1, 3, 6, 4, 2])
    return x, torch.arange(7)[None, :] < lengths[:, None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, port: int, workdir: str, model_dir: str, prompts_file: str) -> None:
    """One of the 2 spawned processes: joins the group as torchrun would set it up, computes its share."""
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    dist = distributed.init(torch.device("cpu"))
    assert (dist.rank, dist.world_size, dist.backend) == (rank, WORLD, "gloo")
    try:
        out = {}
        x, mask = whitening_inputs()
        rows = slice(rank * 4, rank * 4 + 4)
        own_width = int(mask[rows].sum(1).max())
        x_own, mask_own = x[rows, :own_width], mask[rows, :own_width]
        out["whiten"] = masked_whiten(x_own, mask_own, reduce_sum=dist.sum)
        out["whiten_no_shift"] = masked_whiten(x_own, mask_own, shift_mean=False, reduce_sum=dist.sum)
        out["var_unbiased"] = masked_var(x_own, mask_own, unbiased=True, reduce_sum=dist.sum)
        for name, overrides in CASES:
            cfg = case_config(model_dir, prompts_file, overrides)
            setup = load_perturbed(cfg)
            full = Rollout(**torch.load(Path(workdir) / f"{name}-rollout.pt"))
            n = len(full) // WORLD
            mine = own_rollout(full.select(slice(rank * n, (rank + 1) * n)))
            out[name] = gradient_step(setup, mine, cfg, dist)
        torch.save(out, Path(workdir) / f"rank{rank}.pt")
    finally:
        dist.close()


def run_two_processes(worker_fn, *args, timeout: float = 300) -> None:
    """``worker_fn(rank, port, *args)`` in 2 spawned processes; fail (not hang) when a collective is left waiting."""
    context = mp.spawn(worker_fn, args=(free_port(), *args), nprocs=WORLD, join=False)
    deadline = time.time() + timeout
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2 spawned processes did not finish in time (a collective left waiting?)")


def pad_cat(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1])) for p in parts])


def fixed_rollout(setup, cfg, path: Path) -> Rollout:
    """8 scored rows, saved to ``path`` for the processes: sampled from the adapters halved (so old logprobs differ
    from the weights being trained: the ratio is not 1), unequal lengths with the second half all shorter (its
    process's own rollout is narrower), random scores. Leaves ``setup``'s adapters halved."""
    from rlhflab.rollout import sample_rollout, score_rollout

    k = cfg.rollout.samples_per_prompt
    prompts = [p for p in setup.train_prompts[: 8 // k] for _ in range(k)]
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in setup.roles.trainable_parameters():
            p.mul_(0.5)
    rollout, _ = sample_rollout(setup.roles.actor(), setup.tokenizer, prompts, cfg, g, setup.device)
    lengths = torch.tensor([8, 3, 8, 5, 2, 6, 4, 3]).clamp(max=rollout.response_ids.shape[1])
    mask = torch.arange(rollout.response_ids.shape[1])[None, :] < lengths[:, None]
    rollout = replace(rollout, response_mask=mask & rollout.response_mask)
    rollout = replace(rollout, scores=torch.randn(len(rollout), generator=g))
    rollout, _ = score_rollout(setup, rollout, cfg, with_values=setup.roles.critic is not None)
    torch.save({f.name: getattr(rollout, f.name) for f in fields(rollout)}, path)
    return rollout


def test_two_processes_equal_one_process_on_the_concatenated_batch(tiny_model_dir, prompts_file, tmp_path):
    single = {}
    for name, overrides in CASES:
        cfg = case_config(tiny_model_dir, prompts_file, overrides)
        setup = load_perturbed(cfg)
        rollout = fixed_rollout(setup, cfg, tmp_path / f"{name}-rollout.pt")
        setup = load_perturbed(cfg)
        single[name] = gradient_step(setup, rollout, cfg, SINGLE)

    run_two_processes(worker, str(tmp_path), str(tiny_model_dir), str(prompts_file))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]

    x, mask = whitening_inputs()
    for key, kwargs in (("whiten", {}), ("whiten_no_shift", {"shift_mean": False})):
        together = pad_cat([out[key] for out in ranks], x.shape[1])
        torch.testing.assert_close(together, masked_whiten(x, mask, **kwargs), rtol=0, atol=1e-6)
    for out in ranks:
        torch.testing.assert_close(out["var_unbiased"], masked_var(x, mask, unbiased=True), rtol=0, atol=1e-6)

    for name, _ in CASES:
        advantages, grads, totals = single[name]
        together = pad_cat([out[name][0] for out in ranks], advantages.shape[1])
        torch.testing.assert_close(together, advantages, rtol=0, atol=1e-6, msg=f"{name}: advantages")
        assert any(g.abs().max() > 1e-3 for g in grads)
        for out in ranks:  # every process holds the global gradient
            assert len(out[name][1]) == len(grads)
            for i, (a, b) in enumerate(zip(out[name][1], grads)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=f"{name}: gradient of parameter {i}")
            assert out[name][2].keys() == totals.keys()
            for key, value in totals.items():  # losses and token-weighted stats reduce to the global ones
                assert out[name][2][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (name, key)


def test_batch_arithmetic_and_disjoint_shares():
    prompts = [f"p{i}" for i in range(8)]
    shares = [Dist(rank=r, world_size=2).shard(prompts) for r in range(2)]
    assert shares == [prompts[:4], prompts[4:]]
    assert SINGLE.shard(prompts) is prompts
    Dist(world_size=2).check_batch(32, 4, 2, 8)  # 16 per process: 2 minibatches of 8, groups of 4
    Dist(world_size=2).check_batch(32, 1, 2, 16)  # demo-ppo: minibatches of 8 < micro-batch 16: one micro-batch
    for args, message in [
        ((9, 1, 1, 1), "divisible by the number of processes"),
        ((8, 8, 1, 1), "samples_per_prompt"),
        ((24, 1, 2, 4), "num_minibatches"),  # minibatches of 6 per process
        ((12, 1, 4, 1), "num_minibatches"),
    ]:
        with pytest.raises(UserError, match=message):
            Dist(world_size=2).check_batch(*args)


# ----------------------------------------------------------------------------------------------------------------
# through torchrun


def torchrun(*args: str, module: bool) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2`` of ``rlhflab`` (``-m rlhflab`` or the console script)."""
    script = Path(sys.executable).parent / "rlhflab"
    target = ["-m", "rlhflab"] if module or not script.exists() else [str(script)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={WORLD}"]
    return subprocess.run([*command, *target, *args], env=env, capture_output=True, text=True, timeout=600)


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith(("time/", "perf/"))} for row in rows]


def test_torchrun_logs_each_step_once_and_resumes_exactly(tiny_model_dir, prompts_file, tmp_path):
    run = tmp_path / "run"
    sets = ["train.lr=5e-3", "algorithm.ppo_epochs=2", "checkpoint.every=1", "checkpoint.keep=10"]
    sets += ["eval.max_prompts=2", "rollout.batch_size=4", "train.micro_batch_size=2", "rollout.max_new_tokens=5"]
    argv = train_argv(tiny_model_dir, prompts_file, run, *[a for v in sets for a in ("--set", v)], steps=3)
    done = torchrun(*argv, module=True)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = metrics(run)
    assert [m["step"] for m in rows] == [1, 2, 3]  # rank 0 alone logs
    assert all(m["dist/world_size"] == WORLD for m in rows)
    assert abs(rows[0]["objective/kl"]) < 1e-6
    assert "# distributed: torchrun, world_size 2, backend gloo" in (run / "config.yaml").read_text()
    assert done.stdout.count("training done") == 1  # and evaluates once
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["after"]["num_samples"] == 2
    state = torch.load(run / "checkpoints" / "step-000002" / "trainer_state.pt", weights_only=True)
    assert len(state["per_rank"]) == WORLD
    assert not torch.equal(state["per_rank"][0]["sample_gen"], state["per_rank"][1]["sample_gen"])

    # resume from the step-2 checkpoint, as after a crash during step 3: step 3 and the weights come out the same
    final = load_file(str(run / "final" / "adapter_model.safetensors"))
    shutil.rmtree(run / "final")
    done = torchrun("train", "--resume", "--output-dir", str(run), module=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and done.stdout.count("resuming") == 1
    assert metrics(run) == rows
    again = load_file(str(run / "final" / "adapter_model.safetensors"))
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
