"""``rlhflab bench``: speed and memory of the role layouts, measured through the real training loop.

For each layout (``shared``, ``separate``) a fresh Python process runs :func:`rlhflab.train.train` on a
random-weight model of the chosen shape, so the peak resident memory of one layout never mixes with another's.
The worker (:mod:`rlhflab.bench_worker`) only *observes* the loop: it is the loop's timing hooks
(:class:`rlhflab.hooks.LoopHooks`) and puts forward hooks on the models to count passes and FLOPs; it never trains
differently from ``rlhflab train``.

FLOPs are counted, not guessed from a parameter count: every ``nn.Linear`` call adds ``2 · in · out`` per row it
multiplies (LoRA's A and B, the value head and the LM head included, only the positions actually projected), every
attention adds ``4 · layers · hidden · L · L_ctx`` per row (scores and weighted sum). Under autograd the backward
is counted per call too: ``2 · in · out`` per row for the input gradient when the input needs one, the same again
for the weight gradient when the weight is trained (LoRA only), ``2×`` the forward for attention. The GEMM peak is
the best of a few large square ``torch.matmul`` in the same dtype and device, measured in the same run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhflab.bench_worker import sync
from rlhflab.errors import UserError

SHAPES = ("tiny", "pythia-410m")
LAYOUTS = ("shared", "separate")
ALGOS = ("ppo", "rloo", "grpo")
PHASES = ("generate", "reward", "logprobs", "ref_logprobs", "values", "update")
PYTHIA_DIR = Path(__file__).resolve().parents[2] / "../shared/assets/pythia-410m-deduped"  # a source checkout
PROMPT_WORDS = 10


@dataclass
class BenchOptions:
    model_shape: str = "tiny"
    roles: list[str] = field(default_factory=lambda: list(LAYOUTS))
    steps: int = 2
    dtype: str = "fp32"
    batch: int | None = None  # completions per step; default 16 (PPO) or 32 = 8 prompts x 4 (RLOO, GRPO)
    algo: str = "ppo"
    device: str = "auto"
    overrides: list[str] = field(default_factory=list)
    pythia_dir: str | None = None
    json_path: str | None = None


# ----------------------------------------------------------------------------------------------------------------
# the model, prompts and config of one benchmark


def pythia_source(opts: BenchOptions) -> Path:
    """The folder with Pythia-410m's published config.json and tokenizer files (no weights are read)."""
    folder = Path(opts.pythia_dir or os.environ.get("RLHFLAB_PYTHIA_DIR", PYTHIA_DIR)).resolve()
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        raise UserError(
            f"--model-shape pythia-410m: {folder} lacks config.json / tokenizer.json of EleutherAI/pythia-410m-deduped "
            "(give --pythia-dir DIR or set RLHFLAB_PYTHIA_DIR)"
        )
    return folder


def build_model_dir(opts: BenchOptions, out: Path) -> Path:
    """A random-weight model of the shape, saved with its tokenizer like a hub checkpoint, in the run's dtype
    (a bf16 run then maps bf16 weights, instead of converting fp32 ones and counting both in its peak memory)."""
    from transformers import AutoConfig, GPTNeoXForCausalLM

    from rlhflab.data.corpus import generate_reviews
    from rlhflab.models.loading import DTYPES
    from rlhflab.models.tiny import build_tiny_model, tiny_config, train_tokenizer

    dtype = DTYPES[opts.dtype]
    if opts.model_shape == "tiny":  # the demo model's shape (4 layers, width 128, ~2k BPE vocabulary)
        tokenizer = train_tokenizer([r.text for r in generate_reviews(2000, seed=0)], vocab_size=2048)
        build_tiny_model(tiny_config(len(tokenizer)), seed=0).to(dtype).save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    source = pythia_source(opts)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = GPTNeoXForCausalLM(AutoConfig.from_pretrained(source))
    model.to(dtype).save_pretrained(out)
    del model
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return out


def write_prompts(path: Path, n: int = 256) -> Path:
    """Review openings of 10 words from the offline review generator (the IMDB prompts are 10 words too)."""
    from rlhflab.data.corpus import generate_reviews

    openings = {" ".join(r.text.split()[:PROMPT_WORDS]) for r in generate_reviews(4 * n, seed=1)}
    path.write_text("\n".join(sorted(openings)[:n]) + "\n")
    return path


def bench_config(opts: BenchOptions, model_dir: Path, prompts_file: Path, layout: str, run_dir: Path):
    """The imdb-pythia-410m-<algo> preset, with the local model and prompts and VADER as the judge."""
    from rlhflab.config import Config, apply_override, from_dict, load_preset_dict, validate

    data = load_preset_dict(f"imdb-pythia-410m-{opts.algo}")
    batch = opts.batch or (16 if opts.algo == "ppo" else 32)
    data["model"].update(name=str(model_dir), dtype=opts.dtype, device=opts.device, roles=layout)
    data["data"] = {"source": "file", "prompts_file": str(prompts_file), "max_prompt_tokens": 32}
    data["reward"] = {"components": [{"name": "vader", "kind": "lexicon"}]}
    data["rollout"]["batch_size"] = batch
    data["train"]["steps"] = opts.steps
    data["eval"] = {"enabled": False}
    data["tracking"] = {"progress": True, "samples_every": 0}
    data["output_dir"] = str(run_dir)
    for assignment in opts.overrides:
        apply_override(data, assignment)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------------------------------------------
# GEMM peak


def gemm_peak_flops(dtype: torch.dtype, device: torch.device, n: int | None = None, repeats: int = 5) -> float:
    """Best FLOP/s of an (n × n) @ (n × n) matmul: 2·n³ FLOPs per call."""
    n = n or (4096 if device.type == "cuda" else 2048)
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up
    best = math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


# ----------------------------------------------------------------------------------------------------------------
# the parent: build, run each layout, summarise


def heap_allocator() -> str:
    """The heap allocator of this process, which the bench's workers inherit: ``jemalloc`` or ``tcmalloc`` when
    preloaded (``LD_PRELOAD``), else the C library's. Peak memory depends on it: glibc keeps freed blocks of the
    update's activations resident (see docs/benchmarks.md, "Heap allocators")."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux
        return "system"
    return next((name for name in ("jemalloc", "tcmalloc", "mimalloc") if name in maps), "glibc")


def summarise(raw: dict, batch: int) -> dict:
    """Means over the steps after the first (the first pays one-off costs), or the only step."""
    steps = raw["steps"][1:] or raw["steps"]

    def mean(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    def phase_mean(key: str, phase: str) -> float:
        return mean(s[key].get(phase, 0) for s in steps)

    split = {p: phase_mean("seconds", p) for p in PHASES}
    step_seconds = mean(s["step_seconds"] for s in steps)
    split["other"] = max(step_seconds - sum(split.values()), 0.0)
    phases = [p for p in PHASES if any(p in s["forward_calls"] for s in steps)]
    update_flops = phase_mean("flops", "update")
    step_flops = mean(sum(s["flops"].values()) for s in steps)
    return {
        "roles": raw["roles"],
        "peak_rss_bytes": raw["peak_rss_bytes"],
        "peak_cuda_bytes": raw["peak_cuda_bytes"],
        "step_seconds": step_seconds,
        "measured_steps": f"{2 if len(raw['steps']) > 1 else 1}..{len(raw['steps'])}",
        "split_seconds": split,
        "tokens_per_second": mean(s["response_tokens"] for s in steps) / step_seconds,
        "mean_response_length": mean(s["mean_length"] for s in steps),
        "forward_passes_per_step": sum(phase_mean("forward_calls", p) for p in phases),
        "forward_calls": {p: phase_mean("forward_calls", p) for p in phases},
        "batch_passes": {p: phase_mean("rows", p) / batch for p in phases},
        "update_flops": update_flops,
        "update_flops_per_second": update_flops / split["update"] if split["update"] else 0.0,
        "step_flops": step_flops,
        "step_flops_per_second": step_flops / step_seconds,
        "steps": raw["steps"],
    }


def run_bench(opts: BenchOptions) -> dict:
    check_options(opts)
    from rlhflab.models.loading import resolve_device, resolve_dtype

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    results = []
    with tempfile.TemporaryDirectory(prefix="rlhflab-bench-") as tmp:
        tmp = Path(tmp)
        print(f"bench: building a random-weight {opts.model_shape} model ...", file=sys.stderr)
        model_dir = build_model_dir(opts, tmp / "model")
        prompts = write_prompts(tmp / "prompts.txt")
        for layout in opts.roles:
            cfg = bench_config(opts, model_dir, prompts, layout, tmp / f"run-{layout}")
            from rlhflab.config import save_config

            save_config(cfg, tmp / f"{layout}.yaml")
            print(f"bench: {layout} roles, {opts.steps} {opts.algo} step(s) in a fresh process ...", file=sys.stderr)
            started = time.perf_counter()
            done = subprocess.run(  # its stderr is ours: the progress bar over the steps, and any error
                [
                    sys.executable,
                    "-m",
                    "rlhflab.bench_worker",
                    str(tmp / f"{layout}.yaml"),
                    str(tmp / f"{layout}.json"),
                ],
                stdout=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise UserError(f"the {layout} run failed (exit status {done.returncode}; its error is above)")
            raw = json.loads((tmp / f"{layout}.json").read_text())
            raw["process_seconds"] = time.perf_counter() - started
            results.append(summarise(raw, cfg.rollout.batch_size))
        gemm = gemm_peak_flops(dtype, device)
    for r in results:
        r["update_fraction_of_gemm_peak"] = r["update_flops_per_second"] / gemm
    report = {
        "settings": {
            "model_shape": opts.model_shape,
            "algo": opts.algo,
            "steps": opts.steps,
            "dtype": opts.dtype,
            "device": str(device),
            "batch": cfg.rollout.batch_size,
            "samples_per_prompt": cfg.rollout.samples_per_prompt,
            "prompt_words": PROMPT_WORDS,
            "max_new_tokens": cfg.rollout.max_new_tokens,
            "ppo_epochs": cfg.algorithm.ppo_epochs,
            "num_minibatches": cfg.algorithm.num_minibatches,
            "micro_batch_size": cfg.train.micro_batch_size,
            "overrides": opts.overrides,
        },
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "heap_allocator": heap_allocator(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        },
        "gemm_peak_flops_per_second": gemm,
        "layouts": results,
    }
    by_roles = {r["roles"]: r for r in results}
    if {"shared", "separate"} <= set(by_roles):
        shared, separate = by_roles["shared"], by_roles["separate"]
        report["shared_over_separate"] = {
            "peak_rss": shared["peak_rss_bytes"] / separate["peak_rss_bytes"],
            "step_seconds": shared["step_seconds"] / separate["step_seconds"],
        }
        if shared["peak_cuda_bytes"] and separate["peak_cuda_bytes"]:
            report["shared_over_separate"]["peak_cuda"] = shared["peak_cuda_bytes"] / separate["peak_cuda_bytes"]
    return report


def check_options(opts: BenchOptions) -> None:
    if opts.model_shape not in SHAPES:
        raise UserError(f"--model-shape: {opts.model_shape!r} is not one of {', '.join(SHAPES)}")
    bad = [r for r in opts.roles if r not in LAYOUTS]
    if bad or not opts.roles:
        raise UserError(f"--roles: give a comma-separated list of {', '.join(LAYOUTS)}, got {','.join(opts.roles)}")
    if opts.steps < 1:
        raise UserError(f"--steps: must be a positive integer, got {opts.steps}")
    if opts.batch is not None and opts.batch < 1:
        raise UserError(f"--batch: must be a positive integer, got {opts.batch}")
    if opts.dtype not in ("fp32", "bf16"):
        raise UserError(f"--dtype: {opts.dtype!r} is not fp32 or bf16")
    if opts.algo not in ALGOS:
        raise UserError(f"--algo: {opts.algo!r} is not one of {', '.join(ALGOS)}")
    if opts.json_path and not Path(opts.json_path).resolve().parent.is_dir():
        raise UserError(f"--json: the folder of {opts.json_path} does not exist")
    if opts.model_shape == "pythia-410m":
        pythia_source(opts)


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [
        f"rlhflab bench: {s['model_shape']} shape, {s['algo']}, {s['dtype']} on {s['device']}, {s['batch']} "
        f"completions x {s['max_new_tokens']} new tokens, {s['ppo_epochs']} epochs, micro-batch "
        f"{s['micro_batch_size']}; times are means over steps {report['layouts'][0]['measured_steps']}",
        f"GEMM peak measured now: {report['gemm_peak_flops_per_second'] / 1e9:.1f} GFLOP/s; heap allocator: "
        f"{report['machine']['heap_allocator']}",
        "",
    ]
    header = [
        "roles",
        "peak RSS",
        "peak CUDA",
        "step s",
        *PHASES,
        "other",
        "tok/s",
        "fwd/step",
        "update GF/s",
        "% peak",
    ]
    rows = [header]
    for r in report["layouts"]:
        sp = r["split_seconds"]
        rows.append(
            [
                r["roles"],
                _gib(r["peak_rss_bytes"]),
                _gib(r["peak_cuda_bytes"]),
                f"{r['step_seconds']:.2f}",
                *[f"{sp[p]:.2f}" for p in (*PHASES, "other")],
                f"{r['tokens_per_second']:.1f}",
                f"{r['forward_passes_per_step']:.0f}",
                f"{r['update_flops_per_second'] / 1e9:.1f}",
                f"{100 * r['update_fraction_of_gemm_peak']:.0f}%",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for i, row in enumerate(rows):
        lines.append("  ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("")
    for r in report["layouts"]:
        calls = ", ".join(f"{p} {n:g}" for p, n in r["forward_calls"].items())
        passes = ", ".join(f"{p} {n:g}" for p, n in r["batch_passes"].items())
        lines.append(f"{r['roles']}: forward calls per step: {calls}; full-batch passes: {passes}")
    if "shared_over_separate" in report:
        ratio = report["shared_over_separate"]
        lines.append(
            f"shared / separate: peak RSS {ratio['peak_rss']:.2f}x, step time {ratio['step_seconds']:.2f}x"
            + (f", peak CUDA {ratio['peak_cuda']:.2f}x" if "peak_cuda" in ratio else "")
        )
    return "\n".join(lines)


def bench_command(opts: BenchOptions) -> dict:
    report = run_bench(opts)
    print(format_report(report))
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(report, indent=1) + "\n")
        print(f"JSON written to {opts.json_path}")
    return report
