"""Learning at equal samples, critic layout by critic layout, over several seeds: one table of held-out results.

    OMP_NUM_THREADS=1 python bench/critic_seeds.py --out runs/critic-seeds --seeds 1,2,3,4,5 \\
        --variant separate= --variant reference-mlp=critic.backbone=reference,critic.head=mlp

Each variant is ``NAME=KEY=VALUE,KEY=VALUE`` (``--set`` overrides on top of the preset, default ``demo-ppo``); every
variant trains once per seed (``rlhflab train --preset P --seed S``, one child process at a time, a finished run is
reused) and the table gives, per seed and as min–max: the held-out positive share (the reward's judge, VADER in the
demo), the naive-Bayes judge's, the reference perplexity after / before, the held-out KL, the critic's explained
variance (mean of the last 10 steps) and the median update time. Written to ``<out>/critic_seeds.md`` too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, sets = text.partition("=")
    if not name:
        raise SystemExit(f"--variant {text!r}: expected NAME=KEY=VALUE,KEY=VALUE (or NAME= for the preset)")
    return name, [s for s in sets.split(",") if s]


def run(preset: str, seed: int, sets: list[str], out: Path) -> None:
    if (out / "eval" / "summary.json").is_file():
        return
    argv = [sys.executable, "-m", "rlhflab", "train", "--preset", preset, "--seed", str(seed), "--output-dir", str(out)]
    argv += ["--overwrite"] + [arg for s in sets for arg in ("--set", s)]
    with open(out.parent / f"{out.name}.log", "w") as log:
        subprocess.run(argv, check=True, stdout=log, stderr=subprocess.STDOUT)


def measure(out: Path) -> dict[str, float]:
    summary = json.loads((out / "eval" / "summary.json").read_text())
    before, after = summary["before"], summary["after"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ev = [r["val/explained_variance"] for r in rows[-10:] if "val/explained_variance" in r]
    return {
        "positive": 100 * after["positive_share"],
        "bayes": 100 * after.get("judge/bayes_positive_share", float("nan")),
        "ppl_ratio": after["ref_perplexity"] / before["ref_perplexity"],
        "kl": after.get("kl", float("nan")),
        "ev": statistics.fmean(ev) if ev else float("nan"),
        "update": statistics.median(r["time/update"] for r in rows),
    }


COLUMNS = [("positive", "positive %", "{:.1f}"), ("bayes", "naive Bayes %", "{:.1f}"),
           ("ppl_ratio", "ref. perplexity after / before", "{:.2f}x"), ("kl", "held-out KL", "{:.1f}"),
           ("ev", "EV, last 10 steps", "{:.2f}"), ("update", "median update s", "{:.2f}")]  # fmt: skip


def table(results: dict[str, list[dict]]) -> str:
    lines = ["| variant | " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, seeds in results.items():
        cells = []
        for key, _, fmt in COLUMNS:
            values = [s[key] for s in seeds]
            span = f" ({fmt.format(min(values))}–{fmt.format(max(values))})" if len(values) > 1 else ""
            cells.append(" / ".join(fmt.format(v) for v in values) + span)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="demo-ppo")
    p.add_argument("--seeds", default="1,2,3,4,5")
    p.add_argument("--variant", action="append", required=True, help="NAME=KEY=VALUE,KEY=VALUE (repeatable)")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [parse_variant(v) for v in args.variant]
    results: dict[str, list[dict]] = {name: [] for name, _ in variants}
    for seed in seeds:  # seeds outside: after each seed every variant has as many runs
        for name, sets in variants:
            out = args.out / f"{name}-seed{seed}"
            out.parent.mkdir(parents=True, exist_ok=True)
            run(args.preset, seed, sets, out)
            results[name].append(measure(out))
            print(f"{name} seed {seed}: {results[name][-1]}", flush=True)
    text = f"{args.preset}, seeds {args.seeds} (per seed, then min–max)\n\n{table(results)}\n"
    (args.out / "critic_seeds.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
