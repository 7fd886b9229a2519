"""Running a comparison: one child process per (algorithm, seed), finished runs reused, interrupted ones resumed.

Each run trains in a child process (``python -m rlhflab train``) into ``output_dir/<algo>-seed<i>/``, so that its
peak resident memory can be read from the operating system (``os.wait4``) and its wall-clock time measured on its
own; a second child (``python -m rlhflab.compare.heldout``) then measures what the comparison needs beyond the run's
own evaluation: the held-out KL and the family judge's scores. PPO-RM's reward model is trained first, once, into
``output_dir/rm/``. A run that already finished is reused, one interrupted after a checkpoint is resumed, so
running the same command again continues an interrupted comparison.
"""

from __future__ import annotations

import codecs
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from rlhflab.compare.planning import LABELS, OFFLINE, RunSpec, first_difference, get_key, plan_compare
from rlhflab.compare.record import HELDOUT_FILE, STATE_FILE, read_state, reward_model_record, write_state
from rlhflab.compare.render import write_compare_report
from rlhflab.config import Config, to_dict
from rlhflab.errors import UserError
from rlhflab.outdir import check_output_dir
from rlhflab.reporting.rundir import read_config
from rlhflab.reporting.text import format_duration

# ignored when checking that a finished run was trained with the settings asked for now
IGNORED_KEYS = ("output_dir", "tracking")


def run_state(run_dir: Path, cfg: Config) -> str:
    """'done', 'eval' (trained, not evaluated), 'resume' (has a checkpoint), 'fresh' (start over) or 'new'."""
    from rlhflab.checkpoint import latest_checkpoint  # imports torch, which the parent process needs for nothing else

    if not (run_dir / "config.yaml").is_file():
        return "new"
    saved = {k: v for k, v in read_config(run_dir).items() if k not in IGNORED_KEYS}
    wanted = {k: v for k, v in to_dict(cfg).items() if k not in IGNORED_KEYS}
    diff = first_difference(saved, wanted)
    if diff:
        raise UserError(
            f"{run_dir} holds a run with other settings ({diff}: {get_key(saved, diff)!r}, now "
            f"{get_key(wanted, diff)!r}); use another --output-dir or delete that run"
        )
    if (run_dir / "final").is_dir():
        evaluated = not cfg.eval.enabled or (run_dir / "eval" / "summary.json").is_file()
        return "done" if evaluated else "eval"
    return "resume" if latest_checkpoint(run_dir) is not None else "fresh"


def child_command(spec: RunSpec, state: str, overrides: list[str]) -> list[str]:
    """The ``python -m rlhflab ...`` command line that brings a run from ``state`` to finished."""
    run_dir = spec.config.output_dir
    cmd = [sys.executable, "-m", "rlhflab"]
    if state == "eval":
        return cmd + ["eval", "--run", run_dir]
    if state == "resume":
        return cmd + ["train", "--resume", "--output-dir", run_dir]
    cmd += ["train", "--preset", spec.preset, "--output-dir", run_dir, "--steps", str(spec.config.train.steps)]
    cmd += ["--seed", str(spec.seed), *[arg for value in [*overrides, *spec.overrides] for arg in ("--set", value)]]
    return cmd + (["--overwrite"] if state == "fresh" else [])


def heldout_command(spec: RunSpec, judge: dict) -> list[str]:
    """The child that writes ``eval/heldout.json`` of a finished run (:mod:`rlhflab.compare.heldout`)."""
    return [
        sys.executable,
        "-m",
        "rlhflab.compare.heldout",
        "--run",
        spec.config.output_dir,
        "--judge",
        json.dumps(judge),
    ]


def heldout_done(run_dir: Path, judge: dict) -> bool:
    """Whether ``eval/heldout.json`` exists and was scored by ``judge``."""
    try:
        return json.loads((run_dir / "eval" / HELDOUT_FILE).read_text()).get("judge") == judge
    except (OSError, ValueError, AttributeError):
        return False


def _pump(source, log, lock: threading.Lock, echo) -> None:
    """Copy a child's output, byte chunks as they come (tqdm's carriage returns included), to the log and ``echo``."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for chunk in iter(lambda: os.read(source.fileno(), 4096), b""):
        with lock:
            log.write(chunk)
            log.flush()
        if echo is not None:
            echo.write(decoder.decode(chunk))
            echo.flush()


def run_child(cmd: list[str], log_path: Path, echo_stderr: bool = True) -> dict:
    """Run ``cmd``; its stdout goes to ``log_path``, its stderr (progress bar, warnings, errors) there and to ours.

    Returns {"returncode", "wall_s", "peak_rss_mib"} (peak resident set size of the child, None where the OS
    cannot tell). A first Ctrl-C reaches the child too, which finishes its step and saves a checkpoint: we wait for
    it, then raise KeyboardInterrupt.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    lock = threading.Lock()
    interrupted = False
    with log_path.open("ab") as log:
        log.write(f"$ {' '.join(cmd)}\n".encode())
        threads = [
            threading.Thread(target=_pump, args=(proc.stdout, log, lock, None), daemon=True),
            threading.Thread(target=_pump, args=(proc.stderr, log, lock, sys.stderr if echo_stderr else None)),
        ]
        threads[1].daemon = True
        for thread in threads:
            thread.start()
        usage = None
        while True:
            try:
                if hasattr(os, "wait4"):
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = os.waitstatus_to_exitcode(status)
                else:  # pragma: no cover - Windows
                    proc.wait()
                break
            except KeyboardInterrupt:
                if interrupted:  # second Ctrl-C: the child stops at once too
                    proc.kill()
                    raise
                interrupted = True
                print("\ncompare: waiting for the current run to save a checkpoint ...", file=sys.stderr)
        for thread in threads:
            thread.join(timeout=10)
    wall = time.perf_counter() - started
    peak = None
    if usage is not None:  # ru_maxrss: KiB on Linux, bytes on macOS
        peak = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
    result = {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mib": peak}
    if interrupted:
        result["interrupted"] = True
    return result


def last_error_line(log_path: Path) -> str:
    """The last meaningful line of a child's log (its one-line UserError, or the exception of a traceback)."""
    lines = [line.strip() for line in log_path.read_text(errors="replace").replace("\r", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith(("rlhf:", "Loading weights"))]
    return lines[-1] if lines else "(no output)"


def merge_cost(old: dict | None, new: dict) -> dict:
    """A run trained in several segments (interrupted, resumed): wall times add up, peak memory is the largest."""
    old = old or {}
    peaks = [p for p in (old.get("peak_rss_mib"), new.get("peak_rss_mib")) if p is not None]
    return {
        "wall_s": old.get("wall_s", 0.0) + new["wall_s"],
        "peak_rss_mib": max(peaks) if peaks else None,
        "segments": old.get("segments", 0) + 1,
    }


def run_compare(
    preset_family: str,
    algos: list[str],
    budget: int | None,
    seeds: int,
    output_dir: Path,
    overrides: list[str],
    steps: int | None = None,
) -> Path:
    """Train every (algorithm, seed), the online ones at an equal sample budget, then write the comparison report.

    ``preset_family`` 'demo' means presets demo-ppo, demo-rloo, demo-grpo (demo-dpo, demo-ppo-rm). ``budget`` is
    the number of sampled completions each online run gets (default: the PPO preset's steps × batch size);
    ``steps`` sets it as a number of steps instead; DPO keeps its preset's steps. Seeds are the preset's seed + 0 …
    seeds-1. ``overrides`` (``key=value``) apply to every run, the reward model included. Finished runs in
    ``output_dir`` are reused, interrupted ones resumed. Returns the path of ``compare.md``.
    """
    output_dir = check_output_dir(Path(output_dir), lambda path: (path / STATE_FILE).is_file(), "a comparison", None)
    plan = plan_compare(preset_family, list(algos), budget, seeds, output_dir, list(overrides), steps)
    specs = ([plan.reward_model] if plan.reward_model else []) + plan.runs  # the reward model before its users
    states = {spec.name: run_state(Path(spec.config.output_dir), spec.config) for spec in specs}
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state(output_dir)
    costs = previous.get("costs", {})
    state = {**plan.to_json(), "costs": {name: costs[name] for name in states if name in costs}}
    if plan.reward_model and "reward_model" in previous:
        state["reward_model"] = {**previous["reward_model"], **state["reward_model"]}
    write_state(output_dir, state)

    samples = plan.steps * plan.batch_size
    note = "" if samples == plan.budget else f" (budget {plan.budget} rounded down to whole batches)"
    online = [LABELS[a] for a in plan.algos if a not in OFFLINE]
    offline = [
        f"{LABELS[a]} offline at its preset's {info['steps']} steps × {info['pairs_per_step']} preference pairs"
        for a, info in state["offline"].items()
    ]
    budget_text = (
        f"{', '.join(online)}: {plan.steps} steps × {plan.batch_size} completions = {samples} sampled completions "
        f"each{note}"
        if online
        else ""
    )
    print(
        f"compare: {', '.join(LABELS[a] for a in plan.algos)} on the {plan.family} presets; "
        f"{'; '.join(t for t in [budget_text, *offline] if t)}; seeds {plan.seeds}; {len(plan.runs)} runs"
        f"{' and a reward model' if plan.reward_model else ''} into {output_dir}"
    )
    started = time.perf_counter()
    for n, spec in enumerate(specs, 1):
        what = states[spec.name]
        run_dir = Path(spec.config.output_dir)
        who = f"reward model {spec.preset}" if spec.algo == "rm" else f"{LABELS[spec.algo]} seed {spec.seed}"
        head = f"[{n}/{len(specs)}] {who} ({spec.name})"
        if what == "done":
            print(f"{head}: already finished, reused")
        else:
            (run_dir / "eval" / HELDOUT_FILE).unlink(missing_ok=True)  # measured again on what this run becomes
            verb = {"eval": "evaluating", "resume": "resuming", "fresh": "restarting", "new": "training"}[what]
            print(f"{head}: {verb} ...", flush=True)
            log_path = output_dir / "logs" / f"{spec.name}.log"
            result = run_child(child_command(spec, what, plan.overrides), log_path)
            earlier = state["costs"].get(spec.name) if what in ("resume", "eval") else None  # a restart: afresh
            state["costs"][spec.name] = merge_cost(earlier, result)
            write_state(output_dir, state)
            check_child(result, log_path, spec.name)
            cost = state["costs"][spec.name]
            rss = f", peak RSS {cost['peak_rss_mib']:,.0f} MiB" if cost["peak_rss_mib"] else ""
            print(f"{head}: done in {format_duration(result['wall_s'])}{rss}")
        if spec.algo == "rm":
            state["reward_model"] |= reward_model_record(run_dir)
            write_state(output_dir, state)
            if state["reward_model"].get("accuracy") is not None:
                rm = state["reward_model"]
                print(f"{head}: held-out pairwise accuracy {rm['accuracy']:.1%} ({rm['num_pairs']} pairs)")
        elif not heldout_done(run_dir, plan.judge):
            print(f"{head}: held-out KL and judge scores ...", flush=True)
            log_path = output_dir / "logs" / f"{spec.name}.log"
            check_child(run_child(heldout_command(spec, plan.judge), log_path), log_path, spec.name)
    path = write_compare_report(output_dir)
    print(
        f"compare: all runs done ({format_duration(time.perf_counter() - started)} this time); report: "
        f"{path.with_suffix('.html')}"
    )
    return path


def check_child(result: dict, log_path: Path, name: str) -> None:
    """Ctrl-C and a failed child end the comparison (a failure with the last line of its log)."""
    if result.get("interrupted") or result["returncode"] in (130, -2):
        print(f"compare: stopped during {name}; run the same command again to continue", file=sys.stderr)
        raise KeyboardInterrupt
    if result["returncode"] != 0:
        raise UserError(
            f"{name} failed (exit {result['returncode']}): {last_error_line(log_path)} (full log: {log_path})"
        )
