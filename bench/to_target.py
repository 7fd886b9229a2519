"""Time to a target: wall-clock and samples until the held-out positive share reaches it, rlhflab vs TRL, one run.

    python bench/to_target.py --family demo --seeds 1,2,3 --trl-python /work/trl-venv/bin/python --out runs/target

Each contender trains on one task, an rlhflab preset family's (``<family>-ppo``, ``-rloo``, ``-grpo``): the same
model, prompts, reward and held-out prompts × samples, the same judge verdict (the reward's first judge, VADER
compound > 0.05 in the demo and smollm2 presets), evaluated every ``--eval-every`` rollout batches' worth of samples.

- rlhflab: ``rlhflab train --preset <family>-<algo>`` with ``eval.every`` and ``eval.stop_share`` (a child process
  each); the time to target is the run's ``time/elapsed`` at the first evaluation that reached it.
- TRL (``--trl-python``, its own environment, bench/trl/README.md): ``bench/trl/to_target.py`` per TRL algorithm
  and settings (``defaults``: TRL's own; ``rlhflab``: the preset's settings in TRL's names), stopped at the target or
  at ``--trl-cap`` × rlhflab's best time (a contender that has not reached it by then is at least that much slower).

Both clocks start at the first training step and leave out model loading and every held-out evaluation. Runs go one
after another (never two at once), and results are written as they come: ``to_target.json`` and ``to_target.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rlhflab_run(preset: str, seed: int, args, out: Path) -> dict:
    run_dir = out / f"rlhflab-{preset}-seed{seed}"
    sets = [f"seed={seed}", f"eval.every={args.eval_every}", f"eval.stop_share={args.target}"]
    sets += ["tracking.progress=false", *args.set]
    cmd = [sys.executable, "-m", "rlhflab.cli", "train", "--preset", preset, "--output-dir", str(run_dir)]
    cmd += ["--overwrite", *[x for s in sets for x in ("--set", s)]]
    process_seconds = run_child(cmd, run_dir.with_suffix(".log"), args, f"{preset} seed {seed}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [
        {
            "samples": row["step"] * args.batch,
            "train_seconds": row["time/elapsed"],
            "positive_share": row["eval/positive_share"],
            "ref_perplexity": row["eval/ref_perplexity"],
            "kl": row["objective/kl"],
        }
        for row in rows
        if "eval/positive_share" in row
    ]
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    return {
        "library": "rlhflab",
        "algo": preset.rsplit("-", 1)[-1],
        "settings": "preset",
        "seed": seed,
        "reached": next((p for p in curve if p["positive_share"] >= args.target), None),
        "curve": curve,
        "train_seconds": rows[-1]["time/elapsed"],
        "samples": rows[-1]["step"] * args.batch,
        "start_positive_share": summary["before"]["positive_share"],
        "start_ref_perplexity": summary["before"]["ref_perplexity"],
        "process_seconds": process_seconds,
    }


def trl_run(preset: str, algo: str, settings: str, seed: int, cap: float, args, out: Path) -> dict:
    path = out / f"trl-{algo}-{settings}-seed{seed}.json"
    cmd = [args.trl_python, str(REPO / "bench" / "trl" / "to_target.py"), "--preset", preset, "--algo", algo]
    cmd += ["--settings", settings, "--target", str(args.target), "--max-seconds", f"{cap:.1f}"]
    cmd += ["--eval-every-samples", str(args.eval_every * args.batch), "--json", str(path), "--dtype", args.trl_dtype]
    cmd += [x for s in [f"seed={seed}", *args.set] for x in ("--set", s)]
    process_seconds = run_child(cmd, path.with_suffix(".log"), args, f"TRL {algo} ({settings}) seed {seed}")
    result = json.loads(path.read_text())
    return {
        "library": "TRL 1.16",
        "algo": algo,
        "settings": settings,
        "seed": seed,
        "cap_seconds": cap,
        **{k: result[k] for k in ("reached", "curve", "train_seconds", "samples", "start_positive_share", "config")},
        "dtype": result["dtype"],
        "process_seconds": process_seconds,
    }


def run_child(cmd: list[str], log: Path, args, what: str) -> float:
    """Run one contender (under ``flock --lock`` when given), its output in ``log``; returns its wall seconds."""
    began = time.perf_counter()
    cmd = ["flock", args.lock, *cmd] if args.lock else cmd
    with log.open("w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=child_env(args)).returncode
    if rc != 0:
        raise SystemExit(f"{what} failed (exit {rc}); see {log}")
    return time.perf_counter() - began


def child_env(args) -> dict:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    return env


def contender(result: dict) -> str:
    return f"{result['library']} {result['algo']} ({result['settings']})"


def table(results: list[dict], target: float) -> str:
    """One row per contender: median time to target over seeds, each seed's, samples, the share at the end."""
    lines = [
        f"| contender | reached {target:.0%} | time to target, median (each seed) | samples to target (each) | "
        "held-out share at start → end |",
        "|---|---|---|---|---|",
    ]
    names = list(dict.fromkeys(contender(r) for r in results))
    for name in names:
        runs = [r for r in results if contender(r) == name]
        times = [r["reached"]["train_seconds"] if r["reached"] else None for r in runs]
        reached = [t for t in times if t is not None]
        each = ", ".join(
            f"{t:.1f} s" if t is not None else f"> {r['train_seconds']:.0f} s" for t, r in zip(times, runs)
        )
        samples = ", ".join(str(r["reached"]["samples"]) if r["reached"] else f"> {r['samples']}" for r in runs)
        median = f"{statistics.median(reached):.1f} s" if len(reached) == len(runs) else "not every seed"
        ends = ", ".join(
            f"{r['start_positive_share']:.0%} → {(r['curve'][-1]['positive_share'] if r['curve'] else 0):.0%}"
            for r in runs
        )
        lines.append(f"| {name} | {len(reached)}/{len(runs)} | {median} ({each}) | {samples} | {ends} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", default="demo", help="preset family: <family>-ppo, -rloo, -grpo")
    p.add_argument("--algos", default="ppo,rloo,grpo", help="rlhflab algorithms")
    p.add_argument("--trl-algos", default="grpo,rloo", help="TRL algorithms (empty: none)")
    p.add_argument("--trl-settings", default="rlhflab,defaults", help="defaults (TRL's own) and/or rlhflab")
    p.add_argument("--trl-python", default="/work/trl-venv/bin/python")
    p.add_argument("--seeds", default="42")
    p.add_argument("--target", type=float, default=0.9)
    p.add_argument("--eval-every", type=int, default=2, help="rollout batches between held-out evaluations")
    p.add_argument("--batch", type=int, default=32, help="rollout.batch_size of the family (samples per step)")
    p.add_argument("--trl-cap", type=float, default=2.5, help="TRL's cap: this × rlhflab's best median time")
    p.add_argument("--trl-cap-seconds", type=float, default=None, help="TRL's cap in seconds (instead of --trl-cap)")
    p.add_argument("--trl-dtype", default="auto", help="auto (what the preset resolves), fp32 or bf16 (TRL's bf16)")
    p.add_argument("--lock", default=None, help="run each child under `flock LOCK` (one heavy run at a time)")
    p.add_argument("--threads", type=int, default=0, help="OMP threads per child (0 = default)")
    p.add_argument("--set", action="append", default=[], help="override for every contender's preset (key=value)")
    p.add_argument("--out", default="runs/to-target")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    results: list[dict] = []

    def save() -> None:
        (out / "to_target.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
        (out / "to_target.md").write_text(table(results, args.target) + "\n")
        print(table(results, args.target), flush=True)

    for algo in [a for a in args.algos.split(",") if a]:
        for seed in seeds:
            results.append(rlhflab_run(f"{args.family}-{algo}", seed, args, out))
            save()
    best = [
        statistics.median(r["reached"]["train_seconds"] for r in runs)
        for algo in args.algos.split(",")
        if (runs := [r for r in results if r["algo"] == algo]) and all(r["reached"] for r in runs)
    ]
    cap = args.trl_cap_seconds or (args.trl_cap * min(best) if best else 1800.0)
    for algo in [a for a in args.trl_algos.split(",") if a]:
        for settings in args.trl_settings.split(","):
            for seed in seeds:
                results.append(trl_run(f"{args.family}-{algo}", algo, settings, seed, cap, args, out))
                save()


if __name__ == "__main__":
    main()
