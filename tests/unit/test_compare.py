"""`rlhflab compare`: budget arithmetic, the fairness checks, tiny real runs in child processes, resuming, report."""

import json
import math
import sys
from pathlib import Path

import pytest
import yaml
from conftest import LENGTH_REWARD

from rlhflab.compare import (
    RunResult,
    disturbed_timings,
    equal_budget_steps,
    plan_compare,
    planning,  # the modules whose globals the tests patch
    run_child,
    run_compare,
    running,
    split_preset,
    write_compare_report,
)
from rlhflab.config import build_config
from rlhflab.data.pairs import demo_pairs, write_pairs
from rlhflab.errors import UserError

TESTS_DIR = Path(__file__).resolve().parents[1]


def tiny_overrides(model_dir: Path, prompts_file: Path) -> list[str]:
    return [
        f"model.name={model_dir}",
        "model.device=cpu",
        "data.source=file",
        f"data.prompts_file={prompts_file}",
        "rollout.batch_size=8",
        "rollout.max_new_tokens=4",
        "train.micro_batch_size=4",
        "algorithm.ppo_epochs=1",
        "algorithm.num_minibatches=1",
        "eval.max_prompts=2",
        "eval.samples_per_prompt=1",
        "tracking.progress=false",
        LENGTH_REWARD,
    ]


def test_equal_budget_steps():
    assert equal_budget_steps({"demo-ppo": 32, "demo-rloo": 32, "demo-grpo": 32}, 1280) == 40
    assert equal_budget_steps({"demo-ppo": 32}, 1000) == 31  # whole batches only
    assert equal_budget_steps({"demo-ppo": 32}, 32) == 1
    with pytest.raises(UserError, match=r"disagree \(demo-ppo: 32, demo-rloo: 16\)"):
        equal_budget_steps({"demo-ppo": 32, "demo-rloo": 16}, 1280)
    with pytest.raises(UserError, match="smaller than one batch"):
        equal_budget_steps({"demo-ppo": 32}, 31)


def test_plan_for_the_demo_family(tmp_path):
    plan = plan_compare("demo", ["ppo", "rloo", "grpo"], None, 2, tmp_path, [])
    ppo = build_config(preset="demo-ppo")
    assert plan.budget == ppo.train.steps * ppo.rollout.batch_size == 1280  # default: the PPO preset's budget
    assert plan.steps == 40 and plan.batch_size == 32
    assert plan.seeds == [ppo.seed, ppo.seed + 1]
    assert [r.name for r in plan.runs] == [f"{a}-seed{i}" for i in (0, 1) for a in ("ppo", "rloo", "grpo")]
    for run in plan.runs:
        assert run.preset == f"demo-{run.algo}" and run.config.algorithm.name == run.algo
        assert run.config.train.steps == 40 and run.config.seed == plan.seeds[run.index]
        assert run.config.output_dir == str(tmp_path / run.name)
        # equal budget: the same completions per step, whatever the samples per prompt
        assert run.config.rollout.batch_size == 32
    assert plan_compare("demo", ["rloo", "grpo"], 320, 1, tmp_path, []).steps == 10  # PPO's budget still the default
    assert plan_compare("demo-ppo", ["grpo"], 127, 1, tmp_path, ["rollout.batch_size=64"]).steps == 1
    assert plan_compare("demo", ["ppo"], None, 1, tmp_path, [], steps=5).budget == 160


@pytest.mark.parametrize(
    "args, message",
    [
        (("demo", ["ppo", "a2c"], None, 1), "unknown algorithm 'a2c'; choose from ppo, rloo, grpo, dpo, ppo-rm"),
        (("demo", ["rm"], None, 1), "unknown algorithm 'rm'; choose from ppo, rloo, grpo, dpo, ppo-rm"),
        (("demo", ["dpo"], 320, 1), "--budget / --steps: DPO samples no completions"),
        (("nope", ["ppo-rm"], None, 1), "no preset 'nope-ppo-rm'"),
        (("smollm2", ["ppo-rm"], None, 1), "no preset 'smollm2-ppo-rm'"),
        (("demo", ["ppo", "ppo"], None, 1), "each algorithm once"),
        (("nope", ["ppo"], None, 1), "no preset 'nope-ppo'; preset families: demo, imdb-pythia-410m"),
        (("demo", ["ppo"], 16, 1), "--budget 16 is smaller than one batch"),
        (("demo", ["ppo"], None, 0), "--seeds: must be a positive integer"),
    ],
)
def test_plan_errors(tmp_path, args, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_compare(*args, tmp_path, [])


def test_presets_must_agree_on_batch_size_and_judge(tmp_path, monkeypatch):
    real = planning.build_config

    def skewed(preset=None, overrides=()):
        extra = {"demo-grpo": ["rollout.batch_size=64"], "demo-rloo": ["eval.max_prompts=8"]}.get(preset, [])
        return real(preset=preset, overrides=[*overrides, *extra])

    monkeypatch.setattr(planning, "build_config", skewed)
    with pytest.raises(UserError, match=r"disagree \(demo-ppo: 32, demo-grpo: 64\)"):
        plan_compare("demo", ["ppo", "grpo"], None, 1, tmp_path, [])
    with pytest.raises(UserError, match="demo-ppo and demo-rloo differ in eval.max_prompts"):
        plan_compare("demo", ["ppo", "rloo"], None, 1, tmp_path, [])
    with pytest.raises(UserError, match="--budget 100 and --steps 2 disagree"):
        plan_compare("demo", ["ppo"], 100, 1, tmp_path, [], steps=2)


def test_run_child_measures_peak_rss_and_exit_code(tmp_path):
    grab = "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096]); print('ok')"
    result = run_child([sys.executable, "-c", grab], tmp_path / "a.log", echo_stderr=False)
    assert result["returncode"] == 0 and result["wall_s"] > 0
    assert result["peak_rss_mib"] > 150  # the child's own peak, not ours
    assert "ok" in (tmp_path / "a.log").read_text()
    failed = run_child([sys.executable, "-c", "import sys; sys.exit(3)"], tmp_path / "b.log", echo_stderr=False)
    assert failed["returncode"] == 3


def test_compare_end_to_end_then_resume(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))  # the children import tests/reward_fns.py
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matrices: threads only wait for each other on a busy CPU
    out = tmp_path / "cmp"
    overrides = tiny_overrides(tiny_model_dir, prompts_file)
    path = run_compare("demo", ["ppo", "rloo", "grpo"], 8, 1, out, overrides, None)

    assert path == out / "compare.md"
    state = json.loads((out / "compare.json").read_text())
    assert state["steps"] == 1 and state["samples_per_run"] == 8
    for algo in ("ppo", "rloo", "grpo"):
        run_dir = out / f"{algo}-seed0"
        assert (run_dir / "final").is_dir() and (run_dir / "eval" / "summary.json").is_file()
        assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
        cost = state["costs"][f"{algo}-seed0"]
        assert cost["wall_s"] > 0 and cost["peak_rss_mib"] > 50
    md = path.read_text()
    for label in ("PPO", "RLOO", "GRPO", "starting model"):
        assert sum(line.startswith(f"| {label} |") for line in md.splitlines()) == 1, label
    for name in ("score_vs_samples", "score_vs_time", "frontier", "kl", "time_per_step", "memory"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"(plots/{name}.png)" in md
    page = (out / "compare.html").read_text()
    assert page.count("data:image/png;base64,") == 6 and "http://" not in page and "https://" not in page
    assert all(f"{label}</td>" in page for label in ("PPO", "RLOO", "GRPO"))

    # a second call trains nothing: every run has finished
    calls = []

    def fake_child(cmd, log_path, echo_stderr=True):
        calls.append(cmd)
        return {"returncode": 0, "wall_s": 1.0, "peak_rss_mib": 1.0}

    monkeypatch.setattr(running, "run_child", fake_child)
    run_compare("demo", ["ppo", "rloo", "grpo"], 8, 1, out, overrides, None)
    assert calls == []
    # an unfinished run is retrained from scratch, one missing its evaluation is only evaluated
    (out / "ppo-seed0" / "final").rename(out / "ppo-seed0" / "final-old")
    (out / "grpo-seed0" / "eval" / "summary.json").unlink()
    grpo_wall = json.loads((out / "compare.json").read_text())["costs"]["grpo-seed0"]["wall_s"]
    run_compare("demo", ["ppo", "rloo", "grpo"], 8, 1, out, overrides, None)
    # (each followed by its held-out measurement again: the run changed)
    assert [c[2:5] for c in calls] == [
        ["rlhflab", "train", "--preset"],
        ["rlhflab.compare.heldout", "--run", str(out / "ppo-seed0")],
        ["rlhflab", "eval", "--run"],
        ["rlhflab.compare.heldout", "--run", str(out / "grpo-seed0")],
    ]
    assert calls[0][-1] == "--overwrite" and calls[2][-1] == str(out / "grpo-seed0")
    costs = json.loads((out / "compare.json").read_text())["costs"]
    assert costs["ppo-seed0"] == {"wall_s": 1.0, "peak_rss_mib": 1.0, "segments": 1}  # retrained: old cost dropped
    assert costs["grpo-seed0"]["wall_s"] == grpo_wall + 1.0 and costs["grpo-seed0"]["segments"] == 2  # added up
    # another budget into the same directory: refused, not silently mixed with the old runs
    with pytest.raises(UserError, match="holds a run with other settings \\(train.steps: 1, now 2\\)"):
        run_compare("demo", ["ppo", "rloo", "grpo"], 16, 1, out, overrides, None)


def fake_run(out: Path, algo: str, index: int, seed: int, score: float, kl: float, rss: float) -> dict:
    run_dir = out / f"{algo}-seed{index}"
    (run_dir / "eval").mkdir(parents=True)
    rows = [
        {"step": s, "objective/scores": score * s / 8, "objective/kl": kl * s / 8, "time/step": 0.5, "time/update": 0.3}
        for s in range(1, 9)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    side = {"score_mean": 0.0, "positive_share": 0.5, "distinct_2": 0.7, "ref_perplexity": 3.0, "num_samples": 2}
    after = {**side, "score_mean": score, "positive_share": 0.75}
    (run_dir / "eval" / "summary.json").write_text(json.dumps({"before": side, "after": after}))
    for name, value in (("before", 0.0), ("after", score)):
        lines = [{"prompt": f"prompt {i}", "completion": f"{algo} {name} {i}", "score": value} for i in range(3)]
        (run_dir / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return {"algo": algo, "seed": seed, "preset": f"demo-{algo}", "dir": run_dir.name}, {
        "wall_s": 10.0,
        "peak_rss_mib": rss,
        "segments": 1,
    }


def test_report_averages_seeds(tmp_path):
    runs, costs = {}, {}
    for algo, scores in (("ppo", (0.2, 0.4)), ("grpo", (0.5, 0.5))):
        for i, score in enumerate(scores):
            runs[f"{algo}-seed{i}"], costs[f"{algo}-seed{i}"] = fake_run(tmp_path, algo, i, 42 + i, score, 2.0, 500.0)
    state = {"family": "demo", "algos": ["ppo", "grpo"], "presets": {"ppo": "demo-ppo", "grpo": "demo-grpo"},
             "budget": 64, "steps": 8, "batch_size": 8, "samples_per_run": 64, "seeds": [42, 43], "overrides": [],
             "runs": runs, "costs": costs}  # fmt: skip
    (tmp_path / "compare.json").write_text(json.dumps(state))
    md = write_compare_report(tmp_path).read_text()
    ppo = next(line for line in md.splitlines() if line.startswith("| PPO |"))
    cells = [c.strip() for c in ppo.strip("|").split("|")]
    assert cells[1] == "judge, 64 samples"  # the state names no judge: older comparisons
    assert cells[2] == f"+0.300 ± {math.sqrt(0.02):.3f}"  # mean ± sample std over the two seeds
    assert cells[3] == "75%" and cells[4] == "n/a" and cells[5] == "2.00 ± 0.00"  # no eval/heldout.json: no held-out KL
    assert cells[8] == "0.50 s" and cells[9] == "500 MiB"
    assert "Highest held-out score: GRPO +0.500" in md
    assert "| prompt 0 | ppo before 0" in md  # starting model, then each algorithm's completion of the prompt
    assert "step times ranged" not in md  # steady step times: no warning about a busy machine


def test_busy_machine_is_flagged():
    def run(algo, times):
        return RunResult(f"{algo}-seed0", algo, 42, Path("."), [{"time/step": t} for t in times], None, {})

    quiet = run("rloo", [3.0, 1.1, 1.0, 1.3, 1.2, 1.1])  # first step: warm-up, left out
    busy = run("ppo", [3.0, 1.4, 30.0, 31.0, 96.0, 25.0])
    assert disturbed_timings([quiet, busy]) == {"ppo": (1.4, 30.0, 96.0)}


def test_plan_resolves_dpo_and_ppo_rm(tmp_path):
    assert split_preset("demo-ppo-rm") == ("demo", "ppo-rm") and split_preset("demo-ppo") == ("demo", "ppo")
    assert split_preset("demo-dpo") == ("demo", "dpo") and split_preset("demo-rm") is None  # the RM: no algorithm
    plan = plan_compare("demo", ["ppo", "dpo", "ppo-rm"], None, 2, tmp_path, [])
    assert plan.presets == {"ppo": "demo-ppo", "dpo": "demo-dpo", "ppo-rm": "demo-ppo-rm"}
    assert plan.budget == 1280 and plan.steps == 40  # the online runs: PPO's budget
    dpo_steps = build_config(preset="demo-dpo").train.steps
    rm = plan.reward_model
    assert rm.name == "rm" and rm.preset == "demo-rm" and rm.config.output_dir == str(tmp_path / "rm")
    assert rm.config.train.steps == build_config(preset="demo-rm").train.steps  # trained once, at its own steps
    runs = {r.name: r for r in plan.runs}
    assert list(runs) == [f"{a}-seed{i}" for i in (0, 1) for a in ("ppo", "dpo", "ppo-rm")]
    assert runs["dpo-seed1"].config.train.steps == dpo_steps and runs["dpo-seed1"].config.algorithm.name == "dpo"
    assert runs["ppo-rm-seed1"].config.train.steps == 40 and runs["ppo-rm-seed1"].config.seed == plan.seeds[1]
    learned = [c for c in runs["ppo-rm-seed0"].config.reward.components if c.kind == "reward_model"]
    assert [c.path for c in learned] == [str(tmp_path / "rm")]  # not the preset's runs/demo-rm
    assert plan.judge["components"][0]["kind"] == "lexicon"  # every run is scored by the judge PPO trains on
    state = plan.to_json()
    assert state["offline"] == {"dpo": {"steps": dpo_steps, "pairs_per_step": 32}}
    assert state["runs"]["dpo-seed0"]["steps"] == dpo_steps and state["runs"]["ppo-seed0"]["steps"] == 40
    assert state["reward_model"]["dir"] == "rm"
    # a preset name for the family, --steps for the online runs only, --set train.steps for all
    again = plan_compare("demo-ppo-rm", ["dpo", "ppo-rm"], None, 1, tmp_path, [], steps=3)
    assert again.family == "demo" and [r.config.train.steps for r in again.runs] == [dpo_steps, 3]
    assert [r.config.train.steps for r in plan_compare("demo", ["dpo"], None, 1, tmp_path, ["train.steps=5"]).runs] == [
        5
    ]
    assert plan_compare("demo", ["dpo"], None, 1, tmp_path, []).reward_model is None


def test_ppo_rm_needs_a_reward_model_component_and_dpo_the_judge(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="demo-ppo-rm's reward \\(after --set\\) has no reward_model component"):
        plan_compare("demo", ["ppo", "ppo-rm"], None, 1, tmp_path, [LENGTH_REWARD])
    real = planning.build_config

    def skewed(preset=None, overrides=()):
        extra = ["reward.components=[{name: len, kind: short}]"] if preset == "demo-dpo" else []
        return real(preset=preset, overrides=[*overrides, *extra])

    monkeypatch.setattr(planning, "build_config", skewed)
    with pytest.raises(UserError, match="demo-ppo and demo-dpo differ in reward.components"):
        plan_compare("demo", ["ppo", "dpo"], None, 1, tmp_path, [])


def test_compare_ppo_dpo_and_ppo_rm_end_to_end(tiny_model_dir, prompts_file, tmp_path, monkeypatch):
    """A reward model trained once into rm/, PPO-RM pointed at it, DPO offline at its own steps, every run scored by
    the family's judge (VADER) with a held-out KL; the report says which judge trained what."""
    from rlhflab.rewards.lexicon import VaderReward

    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    pairs = tmp_path / "pairs.jsonl"
    write_pairs(pairs, demo_pairs(20, seed=3))
    overrides = [o for o in tiny_overrides(tiny_model_dir, prompts_file) if o != LENGTH_REWARD]  # the presets' VADER
    overrides += [f"preference.file={pairs}", "preference.batch_size=4", "preference.max_length=64"]
    overrides += ["train.scoring_batch_size=8", "train.steps=1", "eval.max_prompts=3"]  # DPO and the RM: 1 step
    out = tmp_path / "cmp"
    path = run_compare("demo", ["ppo", "dpo", "ppo-rm"], 8, 1, out, overrides, None)

    state = json.loads((out / "compare.json").read_text())
    rm_summary = json.loads((out / "rm" / "eval" / "summary.json").read_text())
    accuracy = rm_summary["after"]["accuracy"]
    assert state["reward_model"]["accuracy"] == accuracy and state["reward_model"]["num_pairs"] >= 1
    assert state["runs"]["dpo-seed0"]["steps"] == 1 and state["offline"]["dpo"] == {"steps": 1, "pairs_per_step": 4}
    rm_config = yaml.safe_load((out / "ppo-rm-seed0" / "config.yaml").read_text())
    assert rm_config["reward"]["components"][0] == {**rm_config["reward"]["components"][0], "path": str(out / "rm")}
    heldout = {
        a: json.loads((out / f"{a}-seed0" / "eval" / "heldout.json").read_text()) for a in ("ppo", "dpo", "ppo-rm")
    }
    vader = VaderReward()
    for algo, measured in heldout.items():
        assert measured["kl"]["num_samples"] == 3 and math.isfinite(measured["kl"]["mean"]), algo
        summary = json.loads((out / f"{algo}-seed0" / "eval" / "summary.json").read_text())
        assert measured["kl"]["mean"] == pytest.approx(summary["after"]["kl"]), algo  # the evaluation's own KL
        rows = [json.loads(line) for line in (out / f"{algo}-seed0" / "eval" / "after.jsonl").read_text().splitlines()]
        assert measured["after"]["score_mean"] == pytest.approx(
            sum(vader([r["completion"] for r in rows])) / 3, abs=1e-5
        )
    own = json.loads((out / "ppo-rm-seed0" / "eval" / "summary.json").read_text())["after"]["score_mean"]
    assert own != pytest.approx(heldout["ppo-rm"]["after"]["score_mean"])  # its own evaluation scores with the RM

    md = path.read_text()
    table = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
             if line.startswith("| ") and line.count("|") > 10 and "---" not in line}  # fmt: skip
    header = table["algorithm"]
    assert set(table) == {"algorithm", "starting model", "PPO", "DPO", "PPO-RM"}
    assert header[3:5] == ["vader positive", "bayes positive"]
    assert [table[a][1] for a in ("PPO", "DPO", "PPO-RM")] == [
        "vader, 8 samples",
        "pairs, offline: 1 steps × 4 pairs",
        "reward model, 8 samples",
    ]
    kl_held, kl_train = header.index("KL held-out (nats)"), header.index("KL at end of training")
    for label, algo in (("PPO", "ppo"), ("DPO", "dpo"), ("PPO-RM", "ppo-rm")):
        assert table[label][2] == f"{heldout[algo]['after']['score_mean']:+.3f}", label
        assert table[label][kl_held] == f"{heldout[algo]['kl']['mean']:.2f}", label
    assert table["DPO"][kl_train] == "n/a (offline)" and table["PPO-RM"][kl_train] != "n/a"
    assert "held-out pairwise accuracy" in md and f"{accuracy:.1%} on {state['reward_model']['num_pairs']} pairs" in md
    assert "DPO is offline" in md and "no sample budget" in md and "Every online algorithm (PPO, PPO-RM)" in md
    assert "PPO-RM on the reward model in rm/ (demo-rm, 1 steps" in md

    # a second call trains nothing and measures nothing again: the reward model too is reused
    calls = []
    monkeypatch.setattr(running, "run_child", lambda cmd, log, echo_stderr=True: calls.append(cmd))
    run_compare("demo", ["ppo", "dpo", "ppo-rm"], 8, 1, out, overrides, None)
    assert calls == []
