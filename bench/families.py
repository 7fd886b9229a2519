"""Every model family of the test suite × PPO, RLOO, GRPO through the real CLI: what ``auto`` chose, time per step.

    python bench/families.py [--steps 2] [--families llama,qwen2]

Tiny random models (tests/families.py: hidden 32, 2 blocks, a 300-token BPE), 8 completions x 8 new tokens per
step; prints a Markdown table (families x algorithms, median seconds per step) and the LoRA targets auto picked.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from families import FAMILIES, build_family_dir  # noqa: E402

from rlhflab.cli import main as rlhflab  # noqa: E402

ALGORITHMS = ("ppo", "rloo", "grpo")


def run(model_dir: Path, prompts: Path, out: Path, algorithm: str, steps: int) -> dict:
    sets = [
        f"model.name={model_dir}",
        "model.device=cpu",
        "data.source=file",
        f"data.prompts_file={prompts}",
        "rollout.batch_size=8",
        "train.micro_batch_size=4",
        "rollout.max_new_tokens=8",
        f"algorithm.name={algorithm}",
        "tracking.progress=false",
        "eval.enabled=false",
        *(["rollout.samples_per_prompt=4"] if algorithm != "ppo" else []),
    ]
    code = rlhflab(
        [
            "train",
            "--preset",
            f"demo-{algorithm}",
            "--output-dir",
            str(out),
            "--steps",
            str(steps),
            *[a for s in sets for a in ("--set", s)],
        ]
    )
    if code != 0:
        return {"error": code}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    adapter = json.loads((out / "final" / "adapter_config.json").read_text())
    critic = out / "final" / "critic" / "adapter_config.json"
    return {
        "step_s": statistics.median(m["time/step"] for m in metrics),
        "kl_step1": metrics[0]["objective/kl"],
        "policy": sorted(adapter["target_modules"]),
        "critic": sorted(json.loads(critic.read_text())["target_modules"]) if critic.exists() else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated subset of " + ", ".join(FAMILIES))
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rlhflab-families-"))
    prompts = work / "prompts.txt"
    prompts.write_text("the movie was\ni really hated\nhonestly the\nthis is the\n")
    rows, targets = [], []
    for family in args.families.split(","):
        model_dir = build_family_dir(work / family, family)
        results = {a: run(model_dir, prompts, work / f"{family}-{a}", a, args.steps) for a in ALGORITHMS}
        cells = [f"{r['step_s']:.2f} s" if "step_s" in r else f"exit {r['error']}" for r in results.values()]
        rows.append(f"| {family} | " + " | ".join(cells) + " |")
        ppo = results["ppo"]
        if "policy" in ppo:
            targets.append(f"| {family} | {', '.join(ppo['policy'])} | {', '.join(ppo['critic'] or [])} |")
    print("\n| family | " + " | ".join(ALGORITHMS) + " |\n|---|" + "---|" * len(ALGORITHMS))
    print("\n".join(rows))
    print("\n| family | policy LoRA (auto) | critic LoRA (auto) |\n|---|---|---|")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
