"""``rlhflab compare``: PPO vs RLOO vs GRPO at an equal sample budget, on the same model, prompts, judge and seeds.

The presets ``<family>-<algo>`` (``demo-ppo``, ``demo-rloo``, ``demo-grpo``) differ only in their algorithm and
its settings; the comparison gives each the same number of sampled completions (the budget): ``steps = budget //
rollout.batch_size`` with one batch size for all. PPO samples 1 completion for each of 32 prompts per step, RLOO
and GRPO 4 for each of 8, so every algorithm sees 32 completions per step.

Each (algorithm, seed) trains in a child process (``python -m rlhflab train``) into ``output_dir/<algo>-seed<i>/``,
so that its peak resident memory can be read from the operating system (``os.wait4``) and its wall-clock time
measured on its own. A run that already finished is reused, one interrupted after a checkpoint is resumed, so
running the same command again continues an interrupted comparison. The report (``compare.md``, a self-contained
``compare.html`` and PNG plots) is written from files only by :func:`write_compare_report`.
"""

from __future__ import annotations

import base64
import codecs
import html
import json
import math
import os
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.config import Config, build_config, preset_names, to_dict
from rlhflab.errors import UserError
from rlhflab.outdir import check_output_dir

ALGOS = ("ppo", "rloo", "grpo")
LABELS = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}
COLORS = {"ppo": "#1f77b4", "rloo": "#ff7f0e", "grpo": "#2ca02c"}
# the settings that must be the same for every algorithm, or the comparison compares something else too
SHARED_KEYS = ("model.name", "data", "reward", "eval", "rollout.batch_size", "rollout.max_new_tokens")
# ignored when checking that a finished run was trained with the settings asked for now
IGNORED_KEYS = ("output_dir", "tracking")
STATE_FILE = "compare.json"


# ----------------------------------------------------------------------------------------------------------------
# the plan: which presets, how many steps, which seeds


def families() -> list[str]:
    """Preset families: names that have at least one ``<family>-<algo>`` preset."""
    return sorted({n.rsplit("-", 1)[0] for n in preset_names() if n.rsplit("-", 1)[-1] in ALGOS})


def resolve_presets(family: str, algos: list[str]) -> dict[str, str]:
    """{algo: preset name}; unknown algorithms, duplicates and missing presets raise one-line errors."""
    if not algos:
        raise UserError(f"--algos: give at least one of {', '.join(ALGOS)}")
    bad = [a for a in algos if a not in ALGOS]
    if bad:
        raise UserError(f"--algos: unknown algorithm {bad[0]!r}; choose from {', '.join(ALGOS)}")
    if len(set(algos)) != len(algos):
        raise UserError(f"--algos: each algorithm once, got {','.join(algos)}")
    names = preset_names()
    if family.rsplit("-", 1)[-1] in ALGOS and family not in families():
        family = family.rsplit("-", 1)[0]  # 'demo-ppo' given for 'demo'
    missing = [f"{family}-{a}" for a in algos if f"{family}-{a}" not in names]
    if missing:
        raise UserError(f"--preset: no preset {missing[0]!r}; preset families: {', '.join(families())}")
    return {a: f"{family}-{a}" for a in algos}


def equal_budget_steps(batch_sizes: dict[str, int], budget: int) -> int:
    """Optimisation steps that give every algorithm ``budget`` sampled completions (rounded down to whole batches).

    ``batch_sizes`` maps each preset to its ``rollout.batch_size``; they must agree, and the budget must hold one
    batch at least.
    """
    sizes = set(batch_sizes.values())
    if len(sizes) != 1:
        listed = ", ".join(f"{name}: {size}" for name, size in batch_sizes.items())
        raise UserError(
            f"an equal sample budget needs one rollout.batch_size, but the presets disagree ({listed}); "
            "pass --set rollout.batch_size=N"
        )
    batch = sizes.pop()
    if budget < batch:
        raise UserError(
            f"--budget {budget} is smaller than one batch of rollout.batch_size = {batch} completions; "
            f"give at least {batch}"
        )
    return budget // batch


def get_key(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


def first_difference(a, b, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two nested dicts (None when equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


@dataclass
class RunSpec:
    """One training run of the comparison."""

    algo: str
    seed: int
    index: int  # seed index i: seed = base seed + i
    preset: str
    config: Config

    @property
    def name(self) -> str:
        return f"{self.algo}-seed{self.index}"


@dataclass
class Plan:
    family: str
    algos: list[str]
    presets: dict[str, str]
    budget: int
    steps: int
    batch_size: int
    seeds: list[int]
    overrides: list[str]
    runs: list[RunSpec] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "family": self.family,
            "algos": self.algos,
            "presets": self.presets,
            "budget": self.budget,
            "steps": self.steps,
            "batch_size": self.batch_size,
            "samples_per_run": self.steps * self.batch_size,
            "seeds": self.seeds,
            "overrides": self.overrides,
            "runs": {
                run.name: {"algo": run.algo, "seed": run.seed, "preset": run.preset, "dir": run.name}
                for run in self.runs
            },
        }


def plan_compare(
    preset_family: str,
    algos: list[str],
    budget: int | None,
    seeds: int,
    output_dir: Path,
    overrides: list[str],
    steps: int | None = None,
) -> Plan:
    """Resolve presets, check they share model, data, judge, evaluation and batch size, and fix steps and seeds."""
    if seeds < 1:
        raise UserError(f"--seeds: must be a positive integer, got {seeds}")
    if budget is not None and budget < 1:
        raise UserError(f"--budget: must be a positive number of sampled completions, got {budget}")
    if steps is not None and steps < 1:
        raise UserError(f"--steps: must be a positive integer, got {steps}")
    presets = resolve_presets(preset_family, algos)
    family = next(iter(presets.values())).rsplit("-", 1)[0]
    configs = {algo: build_config(preset=name, overrides=overrides) for algo, name in presets.items()}
    batch_sizes = {presets[a]: cfg.rollout.batch_size for a, cfg in configs.items()}
    dicts = {a: to_dict(cfg) for a, cfg in configs.items()}
    first = algos[0]
    for key in SHARED_KEYS:
        for algo in algos[1:]:
            if key == "rollout.batch_size":
                continue  # checked by equal_budget_steps with its own message
            diff = first_difference(get_key(dicts[first], key), get_key(dicts[algo], key), key + ".")
            if diff:
                raise UserError(
                    f"presets {presets[first]} and {presets[algo]} differ in {diff}; a fair comparison needs the "
                    f"same model, prompts, judge and evaluation (align them with --set {diff}=...)"
                )
    batch = next(iter(batch_sizes.values()))
    if steps is not None:
        if budget is not None and budget != steps * batch:
            raise UserError(
                f"--budget {budget} and --steps {steps} disagree (budget = steps × rollout.batch_size = "
                f"{steps * batch}); give one of them"
            )
        budget = steps * batch
    if budget is None:  # the PPO preset's own budget (the family's reference recipe)
        if "ppo" in configs:
            reference = configs["ppo"]
        elif f"{family}-ppo" in preset_names():
            reference = build_config(preset=f"{family}-ppo", overrides=overrides)
        else:
            reference = configs[first]
        budget = reference.train.steps * reference.rollout.batch_size
    steps = equal_budget_steps(batch_sizes, budget)
    base_seed = configs[first].seed
    seed_list = [base_seed + i for i in range(seeds)]
    plan = Plan(family, list(algos), presets, budget, steps, batch, seed_list, list(overrides))
    for i, seed in enumerate(seed_list):  # seed-major: an interrupted comparison already has every algorithm
        for algo in algos:
            cfg = build_config(preset=presets[algo], overrides=[*overrides, f"train.steps={steps}", f"seed={seed}"])
            spec = RunSpec(algo, seed, i, presets[algo], cfg)
            cfg.output_dir = str(Path(output_dir) / spec.name)
            plan.runs.append(spec)
    return plan


# ----------------------------------------------------------------------------------------------------------------
# running: one child process per run, peak RSS from wait4


def run_state(run_dir: Path, cfg: Config) -> str:
    """'done', 'eval' (trained, not evaluated), 'resume' (has a checkpoint), 'fresh' (start over) or 'new'."""
    from rlhflab.checkpoint import latest_checkpoint
    from rlhflab.report import read_config

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
    cmd += ["--seed", str(spec.seed), *[arg for value in overrides for arg in ("--set", value)]]
    return cmd + (["--overwrite"] if state == "fresh" else [])


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


def read_state(output_dir: Path) -> dict:
    path = output_dir / STATE_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        data = {}
    return data if isinstance(data, dict) else {}


def write_state(output_dir: Path, state: dict) -> None:
    tmp = output_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(output_dir / STATE_FILE)


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
    """Train every (algorithm, seed) at an equal sample budget, then write the comparison report.

    ``preset_family`` 'demo' means presets demo-ppo, demo-rloo, demo-grpo. ``budget`` is the number of sampled
    completions each run gets (default: the PPO preset's steps × batch size); ``steps`` sets it as a number of
    steps instead. Seeds are the preset's seed + 0 … seeds-1. ``overrides`` (``key=value``) apply to every run.
    Finished runs in ``output_dir`` are reused, interrupted ones resumed. Returns the path of ``compare.md``.
    """
    output_dir = check_output_dir(Path(output_dir), lambda path: (path / STATE_FILE).is_file(), "a comparison", None)
    plan = plan_compare(preset_family, list(algos), budget, seeds, output_dir, list(overrides), steps)
    states = {spec.name: run_state(Path(spec.config.output_dir), spec.config) for spec in plan.runs}
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = read_state(output_dir).get("costs", {})
    state = {**plan.to_json(), "costs": {name: previous[name] for name in states if name in previous}}
    write_state(output_dir, state)

    samples = plan.steps * plan.batch_size
    note = "" if samples == plan.budget else f" (budget {plan.budget} rounded down to whole batches)"
    print(
        f"compare: {', '.join(LABELS[a] for a in plan.algos)} on the {plan.family} presets, {plan.steps} steps × "
        f"{plan.batch_size} completions = {samples} sampled completions each{note}; seeds {plan.seeds}; "
        f"{len(plan.runs)} runs into {output_dir}"
    )
    started = time.perf_counter()
    for n, spec in enumerate(plan.runs, 1):
        what = states[spec.name]
        head = f"[{n}/{len(plan.runs)}] {LABELS[spec.algo]} seed {spec.seed} ({spec.name})"
        if what == "done":
            print(f"{head}: already finished, reused")
            continue
        verb = {"eval": "evaluating", "resume": "resuming", "fresh": "restarting", "new": "training"}[what]
        print(f"{head}: {verb} ...", flush=True)
        log_path = output_dir / "logs" / f"{spec.name}.log"
        result = run_child(child_command(spec, what, plan.overrides), log_path)
        earlier = state["costs"].get(spec.name) if what in ("resume", "eval") else None  # a restart starts afresh
        state["costs"][spec.name] = merge_cost(earlier, result)
        write_state(output_dir, state)
        if result.get("interrupted") or result["returncode"] in (130, -2):
            print(f"compare: stopped during {spec.name}; run the same command again to continue", file=sys.stderr)
            raise KeyboardInterrupt
        if result["returncode"] != 0:
            raise UserError(
                f"{spec.name} failed (exit {result['returncode']}): {last_error_line(log_path)} (full log: {log_path})"
            )
        cost = state["costs"][spec.name]
        rss = f", peak RSS {cost['peak_rss_mib']:,.0f} MiB" if cost["peak_rss_mib"] else ""
        print(f"{head}: done in {format_duration(result['wall_s'])}{rss}")
    path = write_compare_report(output_dir)
    print(
        f"compare: all runs done ({format_duration(time.perf_counter() - started)} this time); report: "
        f"{path.with_suffix('.html')}"
    )
    return path


# ----------------------------------------------------------------------------------------------------------------
# reading the runs back


@dataclass
class RunResult:
    name: str
    algo: str
    seed: int
    run_dir: Path
    metrics: list[dict]
    summary: dict | None
    cost: dict

    def series(self, key: str) -> list[float]:
        return [float(row[key]) if isinstance(row.get(key), (int, float)) else math.nan for row in self.metrics]

    def tail_mean(self, key: str) -> float:
        """Mean of ``key`` over the last eighth of the steps (at least one): the end of training, less noisy."""
        values = [v for v in self.series(key) if math.isfinite(v)]
        tail = values[-max(1, len(values) // 8) :]
        return sum(tail) / len(tail) if tail else math.nan


def load_results(output_dir: Path, state: dict) -> list[RunResult]:
    from rlhflab.report import read_jsonl, read_summary

    results = []
    for name, info in state.get("runs", {}).items():
        run_dir = output_dir / info.get("dir", name)
        results.append(
            RunResult(
                name,
                info["algo"],
                info["seed"],
                run_dir,
                read_jsonl(run_dir / "metrics.jsonl"),
                read_summary(run_dir),
                state.get("costs", {}).get(name, {}),
            )
        )
    return results


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None with fewer than two values); NaNs are left out."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


@dataclass
class AlgoRow:
    """The final table's numbers for one algorithm (means over its seeds)."""

    algo: str
    seeds: int
    finished: int
    score: tuple[float, float | None]
    positive_share: float
    kl_end: tuple[float, float | None]
    distinct_2: float
    ref_perplexity: float
    time_per_step: float
    peak_rss_mib: float
    train_seconds: float


def algo_rows(results: list[RunResult], algos: list[str]) -> list[AlgoRow]:
    rows = []
    for algo in algos:
        runs = [r for r in results if r.algo == algo]
        done = [r for r in runs if r.summary]
        after = [r.summary["after"] for r in done]

        def avg(values):
            return mean_std(values)[0]

        rows.append(
            AlgoRow(
                algo=algo,
                seeds=len(runs),
                finished=len(done),
                score=mean_std([a.get("score_mean") for a in after]),
                positive_share=avg([a.get("positive_share") for a in after]),
                kl_end=mean_std([r.tail_mean("objective/kl") for r in runs if r.metrics]),
                distinct_2=avg([a.get("distinct_2") for a in after]),
                ref_perplexity=avg([a.get("ref_perplexity") for a in after]),
                time_per_step=avg([v for r in runs for v in r.series("time/step")]),
                peak_rss_mib=avg([r.cost.get("peak_rss_mib") for r in runs]),
                train_seconds=avg([sum(v for v in r.series("time/step") if math.isfinite(v)) for r in runs]),
            )
        )
    return rows


def before_row(results: list[RunResult]) -> dict | None:
    """The starting model's evaluation (the same for every algorithm of a seed), averaged over the runs."""
    befores = [r.summary["before"] for r in results if r.summary]
    if not befores:
        return None
    keys = ("score_mean", "positive_share", "distinct_2", "ref_perplexity")
    return {k: mean_std([b.get(k) for b in befores])[0] for k in keys}


# ----------------------------------------------------------------------------------------------------------------
# plots


def smooth(values: list[float], half_window: int) -> list[float]:
    from rlhflab.report import smooth as report_smooth

    return report_smooth(values, half_window)


def seed_mean(
    runs: list[RunResult], key: str, cumulative: bool = False
) -> tuple[list[float], list[float], list[float]]:
    """Per-step mean over seeds and the min / max band (steps all runs reached)."""
    curves = []
    for run in runs:
        values = run.series(key)
        if cumulative:
            total, acc = 0.0, []
            for v in values:
                total += v if math.isfinite(v) else 0.0
                acc.append(total)
            values = acc
        if values:
            curves.append(values)
    if not curves:
        return [], [], []
    n = min(len(c) for c in curves)
    columns = [[c[i] for c in curves] for i in range(n)]
    mean = [mean_std(col)[0] for col in columns]
    low = [min(col) for col in columns]
    high = [max(col) for col in columns]
    return mean, low, high


def new_figure(width: float, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state, no GUI backend
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.86)
    return fig, fig.add_subplot(1, 1, 1)


def style(ax, title: str, xlabel: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=11.5, fontweight="bold")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)


def draw_curves(ax, by_algo: dict[str, list[RunResult]], key: str, x_of) -> None:
    """One line per algorithm: mean over seeds (smoothed when long), faint raw mean, min–max band over seeds."""
    for algo, runs in by_algo.items():
        mean, low, high = seed_mean(runs, key)
        if not mean:
            continue
        xs = x_of(algo, runs, len(mean))
        color = COLORS[algo]
        label = f"{LABELS[algo]}" + (f" (mean of {len(runs)} seeds)" if len(runs) > 1 else "")
        if len(runs) > 1:
            ax.fill_between(xs, low, high, color=color, alpha=0.12, linewidth=0)
        if len(mean) >= 20:
            ax.plot(xs, mean, color=color, alpha=0.25, linewidth=1)
            ax.plot(xs, smooth(mean, max(2, len(mean) // 15)), color=color, linewidth=2.2, label=label)
        else:
            ax.plot(xs, mean, color=color, linewidth=2, marker="o", markersize=3, label=label)
    ax.legend(fontsize=9, frameon=False, loc="best")


def plot_score_vs_samples(by_algo, batch: int, path: Path) -> None:
    fig, ax = new_figure(6.0)
    draw_curves(ax, by_algo, "objective/scores", lambda algo, runs, n: [(i + 1) * batch for i in range(n)])
    style(ax, "Judge score vs sampled completions", "completions sampled so far", "mean judge score of the batch")
    fig.savefig(path, format="png")


def plot_score_vs_time(by_algo, path: Path) -> None:
    fig, ax = new_figure(6.0)

    def x_of(algo, runs, n):
        return seed_mean(runs, "time/step", cumulative=True)[0][:n]

    draw_curves(ax, by_algo, "objective/scores", x_of)
    style(ax, "Judge score vs wall-clock", "training time (s, sum of step times)", "mean judge score of the batch")
    fig.savefig(path, format="png")


def plot_kl_vs_samples(by_algo, batch: int, path: Path) -> None:
    fig, ax = new_figure(6.0)
    draw_curves(ax, by_algo, "objective/kl", lambda algo, runs, n: [(i + 1) * batch for i in range(n)])
    style(ax, "KL from the starting model", "completions sampled so far", "nats per completion (summed k1)")
    fig.savefig(path, format="png")


def plot_frontier(by_algo, rows: list[AlgoRow], before: dict | None, path: Path) -> None:
    """Per-step (KL, score) dots, the smoothed path through them, and each algorithm's held-out end point."""
    fig, ax = new_figure(6.0)
    for algo, runs in by_algo.items():
        color = COLORS[algo]
        for run in runs:
            ax.scatter(run.series("objective/kl"), run.series("objective/scores"), s=9, color=color, alpha=0.25)
        kl, score = seed_mean(runs, "objective/kl")[0], seed_mean(runs, "objective/scores")[0]
        if len(kl) >= 2:
            half = max(2, len(kl) // 10)
            ax.plot(smooth(kl, half), smooth(score, half), color=color, linewidth=1.8, alpha=0.8)
    for row in rows:
        if math.isfinite(row.score[0]) and math.isfinite(row.kl_end[0]):
            ax.errorbar(
                row.kl_end[0],
                row.score[0],
                xerr=row.kl_end[1],
                yerr=row.score[1],
                fmt="*",
                markersize=16,
                color=COLORS[row.algo],
                markeredgecolor="black",
                label=f"{LABELS[row.algo]} after training (held-out)",
            )
    if before and math.isfinite(before["score_mean"]):
        ax.scatter(
            [0],
            [before["score_mean"]],
            s=90,
            marker="o",
            color="white",
            edgecolor="black",
            zorder=5,
            label="starting model (held-out)",
        )
    style(ax, "Reward–KL frontier", "KL from the starting model (nats per completion)", "judge score")
    ax.legend(fontsize=8, frameon=False, loc="best", markerscale=0.7)
    fig.savefig(path, format="png")


TIME_PARTS = (
    ("time/generate", "generate", "#4c72b0"),
    ("time/score", "judge", "#dd8452"),
    ("time/forward", "logprobs / values", "#55a868"),
    ("time/update", "update", "#c44e52"),
)


def plot_time_per_step(by_algo, path: Path) -> None:
    """Stacked bars: mean seconds per step in generation, judging, scoring forward passes and updates."""
    fig, ax = new_figure(6.0)
    algos = list(by_algo)
    bottoms = [0.0] * len(algos)
    for key, label, color in TIME_PARTS:
        heights = [mean_std([v for r in by_algo[a] for v in r.series(key)])[0] for a in algos]
        heights = [h if math.isfinite(h) else 0.0 for h in heights]
        ax.bar([LABELS[a] for a in algos], heights, bottom=bottoms, color=color, label=label, width=0.6)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    totals = [mean_std([v for r in by_algo[a] for v in r.series("time/step")])[0] for a in algos]
    for i, total in enumerate(totals):
        if math.isfinite(total):
            ax.text(i, max(total, bottoms[i]), f"{total:.2f} s", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, max([b for b in bottoms] + [t for t in totals if math.isfinite(t)] + [1e-9]) * 1.5)  # legend room
    style(ax, "Time per step", "", "seconds per step (mean)")
    ax.grid(False)
    ax.legend(fontsize=8, frameon=False, loc="upper left", ncol=2)
    fig.savefig(path, format="png")


def plot_memory(rows: list[AlgoRow], path: Path) -> None:
    fig, ax = new_figure(6.0)
    values = [row.peak_rss_mib if row.peak_rss_mib and math.isfinite(row.peak_rss_mib) else 0.0 for row in rows]
    ax.bar([LABELS[r.algo] for r in rows], values, color=[COLORS[r.algo] for r in rows], width=0.6)
    for i, value in enumerate(values):
        ax.text(i, value, f"{value:,.0f} MiB" if value else "n/a", ha="center", va="bottom", fontsize=10)
    ax.set_ylim(0, max(values + [1.0]) * 1.18)
    style(ax, "Peak memory (resident set size of the run)", "", "MiB")
    ax.grid(False)
    fig.savefig(path, format="png")


@dataclass
class Plot:
    title: str
    path: Path
    caption: str


def write_plots(output_dir: Path, results: list[RunResult], rows, before, batch: int) -> list[Plot]:
    out = output_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    by_algo: dict[str, list[RunResult]] = {}
    for r in results:
        if r.metrics:
            by_algo.setdefault(r.algo, []).append(r)
    jobs = [
        (
            "score_vs_samples",
            "Judge score vs sampled completions",
            lambda p: plot_score_vs_samples(by_algo, batch, p),
            "The training batch's mean judge score; the x axis is the budget spent. Equal x = equal samples.",
        ),
        (
            "score_vs_time",
            "Judge score vs wall-clock",
            lambda p: plot_score_vs_time(by_algo, p),
            "The same curves against training time (sum of step times: no model loading, no evaluation).",
        ),
        (
            "frontier",
            "Reward–KL frontier",
            lambda p: plot_frontier(by_algo, rows, before, p),
            "Dots: one training step each (batch score vs its KL from the starting model); lines: their smoothed path. "
            "Stars: held-out score after training at the KL of the last steps. Up and to the left is better.",
        ),
        (
            "kl",
            "KL vs sampled completions",
            lambda p: plot_kl_vs_samples(by_algo, batch, p),
            "How far each policy moved from the starting model (summed k1 per completion).",
        ),
        (
            "time_per_step",
            "Time per step",
            lambda p: plot_time_per_step(by_algo, p),
            "Mean seconds per step, split into generation, judging, log-prob/value forward passes and updates.",
        ),
        (
            "memory",
            "Peak memory",
            lambda p: plot_memory(rows, p),
            "Peak resident set size of each run's process (model, optimizer, activations, Python), mean over "
            "seeds; host memory only: on a GPU, device memory is not in it.",
        ),
    ]
    written = []
    for name, title, draw, caption in jobs if by_algo else []:
        path = out / f"{name}.png"
        try:
            draw(path)
            written.append(Plot(title, path, caption))
        except Exception as err:  # a plot must never hide the tables
            print(f"compare: skipped the {name} plot ({type(err).__name__}: {err})", file=sys.stderr)
    return written


# ----------------------------------------------------------------------------------------------------------------
# text


def format_duration(seconds: float) -> str:
    from rlhflab.report import format_duration as fmt

    return fmt(seconds)


def fmt(value, spec: str, missing: str = "n/a") -> str:
    return (
        missing
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value)
        else spec.format(value)
    )


def pm(pair: tuple[float, float | None], spec: str, std_spec: str = "{:.3f}") -> str:
    """'mean ± std' ('mean' alone with one seed)."""
    mean, std = pair
    text = fmt(mean, spec)
    return text + (" ± " + std_spec.format(std) if std is not None and math.isfinite(mean) else "")


TABLE_HEADER = [
    "algorithm",
    "score after (mean ± std over seeds)",
    "positive share",
    "KL at end (nats)",
    "distinct-2",
    "ref perplexity",
    "time/step",
    "peak RSS",
]


def final_table(rows: list[AlgoRow], before: dict | None) -> list[list[str]]:
    out = []
    if before:
        out.append(
            [
                "starting model",
                fmt(before["score_mean"], "{:+.3f}"),
                fmt(before["positive_share"], "{:.0%}"),
                "0",
                fmt(before["distinct_2"], "{:.3f}"),
                fmt(before["ref_perplexity"], "{:.2f}"),
                "",
                "",
            ]
        )
    for row in rows:
        name = LABELS[row.algo] + ("" if row.finished == row.seeds else f" ({row.finished}/{row.seeds} runs done)")
        out.append(
            [
                name,
                pm(row.score, "{:+.3f}"),
                fmt(row.positive_share, "{:.0%}"),
                pm(row.kl_end, "{:.2f}", "{:.2f}"),
                fmt(row.distinct_2, "{:.3f}"),
                fmt(row.ref_perplexity, "{:.2f}"),
                fmt(row.time_per_step, "{:.2f} s"),
                fmt(row.peak_rss_mib, "{:,.0f} MiB"),
            ]
        )
    return out


def disturbed_timings(results: list[RunResult], ratio: float = 2.5) -> dict[str, tuple[float, float, float]]:
    """{algo: (fastest, median, slowest) step time} for algorithms with a run whose median step took more than
    ``ratio`` × its fastest (the first step, with its warm-up, left out): other load on the machine, not the
    algorithm. On a quiet machine the ratio stays below 1.5."""
    out = {}
    for r in results:
        times = sorted(v for v in r.series("time/step")[1:] if math.isfinite(v))
        if len(times) >= 4 and times[len(times) // 2] > ratio * times[0]:
            out.setdefault(r.algo, (times[0], times[len(times) // 2], times[-1]))
    return out


def headline(rows: list[AlgoRow], before: dict | None, noisy: dict | None = None) -> list[str]:
    """Sentences that answer the question: who reached which score, at what KL, time and memory."""
    noisy = noisy or {}
    ranked = sorted((r for r in rows if math.isfinite(r.score[0])), key=lambda r: -r.score[0])
    if not ranked:
        return ["No run has been evaluated yet."]
    parts = []
    start = f" (starting model {before['score_mean']:+.3f})" if before and math.isfinite(before["score_mean"]) else ""
    for i, r in enumerate(ranked):
        lead = "Highest held-out score: " if i == 0 else "then "
        parts.append(
            f"{lead}{LABELS[r.algo]} {r.score[0]:+.3f} at KL {fmt(r.kl_end[0], '{:.2f}')} nats, "
            f"{fmt(r.time_per_step, '{:.2f}')} s/step ({format_duration(r.train_seconds)} of training), "
            f"{fmt(r.peak_rss_mib, '{:,.0f}')} MiB peak"
        )
    sentences = ["; ".join(parts) + start + "."]
    timed = [r for r in rows if math.isfinite(r.time_per_step) and r.algo not in noisy]
    sized = [r for r in rows if r.peak_rss_mib and math.isfinite(r.peak_rss_mib)]
    if len(timed) > 1:
        fast = min(timed, key=lambda r: r.time_per_step)
        slow = max(timed, key=lambda r: r.time_per_step)
        sentences.append(
            f"Fastest per step: {LABELS[fast.algo]} ({slow.time_per_step / fast.time_per_step:.1f}× faster than "
            f"{LABELS[slow.algo]})."
        )
    if len(sized) > 1:
        small = min(sized, key=lambda r: r.peak_rss_mib)
        big = max(sized, key=lambda r: r.peak_rss_mib)
        if big.peak_rss_mib < 1.05 * small.peak_rss_mib:
            sentences.append(
                f"Peak memory about equal ({small.peak_rss_mib:,.0f}–{big.peak_rss_mib:,.0f} MiB): the model, "
                "libraries and runtime outweigh what each algorithm adds."
            )
        else:
            sentences.append(
                f"Least memory: {LABELS[small.algo]} ({small.peak_rss_mib:,.0f} MiB vs {big.peak_rss_mib:,.0f} MiB "
                f"for {LABELS[big.algo]})."
            )
    if before and math.isfinite(before["distinct_2"]):
        for r in rows:
            if math.isfinite(r.distinct_2) and r.distinct_2 < 0.7 * before["distinct_2"]:
                sentences.append(
                    f"{LABELS[r.algo]}'s completions lost much of their variety (distinct-2 {r.distinct_2:.2f}, "
                    f"starting model {before['distinct_2']:.2f}): look at its completions below."
                )
    for algo, (fastest, median, slowest) in noisy.items():
        sentences.append(
            f"{LABELS[algo]}'s step times ranged from {fastest:.2f} s to {slowest:.2f} s (median {median:.2f} s): "
            "the machine was busy with other work, so its times are not comparable (delete its run directory and "
            "run the same command on a quiet machine)."
        )
    seeds = max(r.seeds for r in rows)
    if seeds < 2:
        sentences.append("One seed only: run with --seeds 3 or more to see the spread between runs.")
    return sentences


def describe_setup(state: dict, results: list[RunResult]) -> str:
    from rlhflab.report import describe_model, describe_reward, read_config

    cfg = next((read_config(r.run_dir) for r in results if (r.run_dir / "config.yaml").is_file()), {})
    model = describe_model(str(cfg.get("model", {}).get("name", "?"))) if cfg else "?"
    components = (cfg.get("reward") or {}).get("components") or []
    reward = " + ".join(describe_reward(c) for c in components if isinstance(c, dict)) or "(not recorded)"
    ks = []
    for algo in state.get("algos", []):
        k = next(
            (
                read_config(r.run_dir).get("rollout", {}).get("samples_per_prompt")
                for r in results
                if r.algo == algo and (r.run_dir / "config.yaml").is_file()
            ),
            None,
        )
        if k:
            ks.append(f"{LABELS[algo]} {state['batch_size'] // k} prompts × {k}")
    seeds = state.get("seeds", [])
    return (
        f"Presets {', '.join(state.get('presets', {}).values())} on {model}, rewarded by {reward}. "
        f"Every algorithm got the same budget: {state.get('steps')} steps × {state.get('batch_size')} completions = "
        f"{state.get('samples_per_run')} sampled completions ({'; '.join(ks)} per step), the same prompt source and "
        f"judge, and the same held-out evaluation; seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(map(str, seeds))}."
    )


def run_rows(results: list[RunResult], steps: int) -> list[list[str]]:
    rows = []
    for r in results:
        train_s = sum(v for v in r.series("time/step") if math.isfinite(v))
        rows.append(
            [
                r.name,
                LABELS[r.algo],
                str(r.seed),
                f"{len(r.metrics)}/{steps}",
                fmt(r.summary["after"].get("score_mean") if r.summary else None, "{:+.3f}"),
                format_duration(train_s) if r.metrics else "",
                format_duration(r.cost["wall_s"]) if r.cost.get("wall_s") else "n/a",
                fmt(r.cost.get("peak_rss_mib"), "{:,.0f} MiB"),
            ]
        )
    return rows


RUN_HEADER = ["run directory", "algorithm", "seed", "steps", "score after", "training", "wall (process)", "peak RSS"]


def sample_columns(results: list[RunResult], algos: list[str], n: int) -> tuple[list[str], list[list[tuple]]]:
    """First ``n`` held-out prompts (one completion each) of the first seed: before, then each algorithm after."""
    from rlhflab.report import read_jsonl

    first_seed = min((r.seed for r in results), default=None)
    runs = {r.algo: r for r in results if r.seed == first_seed}
    header, columns = [], []
    source = next((runs[a] for a in algos if a in runs and (runs[a].run_dir / "eval/before.jsonl").is_file()), None)
    if source is None:
        return [], []

    def first_per_prompt(rows):
        seen, out = set(), []
        for row in rows:
            if row.get("prompt") not in seen:
                seen.add(row.get("prompt"))
                out.append(row)
        return out[:n]

    header.append("starting model")
    columns.append(first_per_prompt(read_jsonl(source.run_dir / "eval" / "before.jsonl")))
    for algo in algos:
        if algo in runs:
            header.append(f"{LABELS[algo]} after")
            columns.append(first_per_prompt(read_jsonl(runs[algo].run_dir / "eval" / "after.jsonl")))
    return header, columns


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    from rlhflab.report import md_table as table

    return table(header, rows)


def render_markdown(state, results, rows, before, plots, samples) -> str:
    from rlhflab.report import md_cell

    title = f"{' vs '.join(LABELS[a] for a in state['algos'])} at an equal budget ({state['family']})"
    out = [f"# {title}", "", describe_setup(state, results), "", "## Result", ""]
    out += [" ".join(headline(rows, before, disturbed_timings(results))), ""]
    out += md_table(TABLE_HEADER, final_table(rows, before)) + [""]
    out += [TABLE_NOTE, ""]
    out += ["## Plots", ""]
    for plot in plots:
        out += [f"![{plot.title}](plots/{plot.path.name})", "", f"*{plot.caption}*", ""]
    header, columns = samples
    if header:
        out += ["## Completions before and after", "", SAMPLES_NOTE, ""]
        table = []
        for i, first in enumerate(columns[0]):
            cells = [md_cell(str(first.get("prompt", "")))]
            for column in columns:
                row = column[i] if i < len(column) else {}
                cells.append(f"{md_cell(str(row.get('completion', '')))} ({fmt(row.get('score'), '{:+.2f}', '')})")
            table.append(cells)
        out += md_table(["prompt", *header], table) + [""]
    out += ["## Runs", ""] + md_table(RUN_HEADER, run_rows(results, state.get("steps", 0))) + [""]
    out += ["Each run directory holds its own report.html, metrics.jsonl and eval/.", ""]
    out += ["Reproduce: `" + reproduce_command(state) + "`", ""]
    return "\n".join(out).rstrip() + "\n"


TABLE_NOTE = (
    "Score, positive share, distinct-2 and perplexity under the starting model come from each run's held-out "
    "evaluation (eval/summary.json, after training); KL at end is the mean summed-k1 KL of the training batches over "
    "the last eighth of the steps; time/step is the mean training step (generation, judging, forward passes, "
    "updates); peak RSS is the largest resident memory of the run's process. The starting model row is the "
    "evaluation before training."
)
SAMPLES_NOTE = (
    "The first held-out prompts, first seed: the starting model's completion (the same for every algorithm: same "
    "seed, same prompts) and each trained policy's, with the judge's score in brackets."
)


def reproduce_command(state: dict) -> str:
    parts = [
        f"rlhflab compare --preset {state.get('family')} --algos {','.join(state.get('algos', []))}",
        f"--budget {state.get('budget')}",
        f"--seeds {len(state.get('seeds', []))}",
    ]
    parts += [f"--set {shlex.quote(o)}" for o in state.get("overrides", [])]
    return " ".join(parts)


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222; max-width: 1200px;
       margin: 2em auto; padding: 0 1.5em; line-height: 1.5; }
h1 { font-size: 1.6em; border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
p.summary { background: #f6f8fa; padding: .8em 1em; border-radius: 6px; }
p.headline { font-size: 1.08em; background: #eef6ee; border-left: 4px solid #2ca02c; padding: .7em 1em; }
p.note { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #d0d7de; padding: .35em .7em; vertical-align: top; text-align: left; }
th { background: #f0f3f6; }
table.numbers td:not(:first-child), table.numbers th:not(:first-child) {
  text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.numbers tr.start td { color: #555; font-style: italic; }
table.samples { width: 100%; font-size: .9em; }
table.samples td.prompt { font-weight: 600; width: 14%; }
span.pos { color: #116329; } span.neg { color: #a40e26; }
span.dot { display: inline-block; width: .8em; height: .8em; border-radius: 50%; margin-right: .4em; }
div.plots { display: grid; grid-template-columns: 1fr 1fr; gap: .8em 1.2em; }
figure { margin: 0; }
figure img { width: 100%; height: auto; border: 1px solid #eee; box-sizing: border-box; }
figcaption { font-size: .85em; color: #555; }
code { background: #f0f3f6; padding: 0 .25em; border-radius: 3px; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def score_span(score) -> str:
    if not isinstance(score, (int, float)) or not math.isfinite(score):
        return ""
    css = "pos" if score > 0 else "neg" if score < 0 else ""
    return f' <span class="{css}">({score:+.2f})</span>'


def render_html(state, results, rows, before, plots, samples) -> str:
    e = html.escape
    title = f"{' vs '.join(LABELS[a] for a in state['algos'])} at an equal budget ({state['family']})"
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}: rlhflab compare</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f'<p class="summary">{e(describe_setup(state, results))}</p>',
        "<h2>Result</h2>",
        f'<p class="headline">{e(" ".join(headline(rows, before, disturbed_timings(results))))}</p>',
        '<table class="numbers"><tr>' + "".join(f"<th>{e(h)}</th>" for h in TABLE_HEADER) + "</tr>",
    ]
    table = final_table(rows, before)
    best = max((r.score[0] for r in rows if math.isfinite(r.score[0])), default=None)
    for i, cells in enumerate(table):
        is_start = before is not None and i == 0
        row = None if is_start else rows[i - (1 if before else 0)]
        dot = "" if row is None else f'<span class="dot" style="background:{COLORS[row.algo]}"></span>'
        tds = [f"<td>{dot}{e(cells[0])}</td>"]
        for j, cell in enumerate(cells[1:], 1):
            strong = j == 1 and row is not None and best is not None and row.score[0] == best and len(rows) > 1
            tds.append(f"<td>{'<b>' + e(cell) + '</b>' if strong else e(cell)}</td>")
        out.append(f'<tr class="{"start" if is_start else "algo"}">' + "".join(tds) + "</tr>")
    out += ["</table>", f'<p class="note">{e(TABLE_NOTE)}</p>', "<h2>Plots</h2>", '<div class="plots">']
    for plot in plots:
        out.append(
            f'<figure><img src="{data_uri(plot.path)}" alt="{e(plot.title)}">'
            f"<figcaption>{e(plot.caption)}</figcaption></figure>"
        )
    out.append("</div>")
    header, columns = samples
    if header:
        out += ["<h2>Completions before and after</h2>", f'<p class="note">{e(SAMPLES_NOTE)}</p>']
        out.append('<table class="samples"><tr><th>prompt</th>' + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for i, first in enumerate(columns[0]):
            cells = [f'<td class="prompt">{e(str(first.get("prompt", "")))}</td>']
            for column in columns:
                row = column[i] if i < len(column) else {}
                text = e(str(row.get("completion", ""))) or "<em>(empty)</em>"
                cells.append(f"<td>{text}{score_span(row.get('score'))}</td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    out += ["<h2>Runs</h2>", '<table class="numbers"><tr>' + "".join(f"<th>{e(h)}</th>" for h in RUN_HEADER) + "</tr>"]
    for r, cells in zip(results, run_rows(results, state.get("steps", 0))):
        link = (
            f'<a href="{e(r.name)}/report.html">{e(cells[0])}</a>'
            if (r.run_dir / "report.html").is_file()
            else e(cells[0])
        )
        out.append(f"<tr><td>{link}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells[1:]) + "</tr>")
    out += ["</table>", f"<p>Reproduce: <code>{e(reproduce_command(state))}</code></p>", "</body></html>"]
    return "\n".join(out) + "\n"


def write_compare_report(output_dir: Path, samples: int = 4) -> Path:
    """Write ``compare.md``, ``compare.html`` (plots embedded) and ``plots/*.png`` from ``compare.json`` and the
    run directories (files only, no model). Runs not finished yet only shorten the report. Returns compare.md."""
    output_dir = Path(output_dir)
    state = read_state(output_dir)
    if not state.get("runs"):
        raise UserError(f"{output_dir} holds no comparison ({STATE_FILE} missing): run `rlhflab compare` first")
    results = load_results(output_dir, state)
    rows = algo_rows(results, state["algos"])
    before = before_row(results)
    plots = write_plots(output_dir, results, rows, before, state["batch_size"])
    sample_table = sample_columns(results, state["algos"], samples)
    (output_dir / "compare.html").write_text(render_html(state, results, rows, before, plots, sample_table))
    path = output_dir / "compare.md"
    path.write_text(render_markdown(state, results, rows, before, plots, sample_table))
    return path
