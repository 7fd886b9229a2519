"""Planning a comparison: which presets, how many steps for an equal sample budget, which seeds, which runs.

The presets ``<family>-<algo>`` (``demo-ppo``, ``demo-rloo``, ``demo-grpo``, ``demo-dpo``, ``demo-ppo-rm``) differ
only in their algorithm and its settings. The online algorithms (PPO, RLOO, GRPO and PPO-RM) get the same number of
sampled completions (the budget): ``steps = budget // rollout.batch_size`` with one batch size for all. PPO samples 1
completion for each of 32 prompts per step, RLOO and GRPO 4 for each of 8, so every algorithm sees 32 completions
per step. DPO samples nothing (it trains offline on preference pairs): it keeps its preset's steps. PPO-RM trains
against a reward model that the comparison trains once from ``<family>-rm`` into its own ``rm/`` folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.config import Config, build_config, preset_names, to_dict
from rlhflab.errors import UserError

ALGOS = ("ppo", "rloo", "grpo", "dpo", "ppo-rm")
DEFAULT_ALGOS = ("ppo", "rloo", "grpo")
LABELS = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO", "dpo": "DPO", "ppo-rm": "PPO-RM"}
OFFLINE = ("dpo",)  # trained on preference pairs: no sampled completions, so no sample budget
LEARNED_REWARD = ("ppo-rm",)  # trained against the comparison's own reward model, not the family's judge
RM_DIR = "rm"  # where the comparison trains the reward model of its PPO-RM runs
# the settings that must be the same for every algorithm, or the comparison compares something else too
SHARED_KEYS = ("model.name", "data", "eval", "rollout.max_new_tokens")
JUDGE_KEYS = ("reward",)  # the same for the algorithms trained on (DPO: evaluated with) the family's judge
# (rollout.batch_size: the same for the online algorithms, checked by equal_budget_steps)


def split_preset(name: str) -> tuple[str, str] | None:
    """``(family, algo)`` of a preset name (``demo-ppo-rm`` → ``("demo", "ppo-rm")``), None for other presets."""
    for algo in sorted(ALGOS, key=len, reverse=True):  # the longest first: ppo-rm before a bare rm or ppo
        if name.endswith(f"-{algo}") and len(name) > len(algo) + 1:
            return name[: -len(algo) - 1], algo
    return None


def families() -> list[str]:
    """Preset families: names that have at least one ``<family>-<algo>`` preset."""
    return sorted({split[0] for n in preset_names() if (split := split_preset(n))})


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
    if (split := split_preset(family)) and family not in families():
        family = split[0]  # 'demo-ppo' given for 'demo'
    missing = [f"{family}-{a}" for a in algos if f"{family}-{a}" not in names]
    if missing:
        raise UserError(f"--preset: no preset {missing[0]!r}; preset families: {', '.join(families())}")
    if "ppo-rm" in algos and f"{family}-rm" not in names:
        raise UserError(f"--algos ppo-rm: no preset '{family}-rm' to train its reward model from")
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


def check_shared(presets: dict[str, str], dicts: dict[str, dict], algos: list[str]) -> None:
    """Every algorithm: the same model, prompts, evaluation and completion length; all but PPO-RM (whose reward is
    the learned model) the same reward: the judge the online ones train on and DPO is evaluated with."""
    judged = [a for a in algos if a not in LEARNED_REWARD]
    for keys, members in ((SHARED_KEYS, algos), (JUDGE_KEYS, judged)):
        for key in keys:
            for algo in members[1:]:
                diff = first_difference(get_key(dicts[members[0]], key), get_key(dicts[algo], key), key + ".")
                if diff:
                    raise UserError(
                        f"presets {presets[members[0]]} and {presets[algo]} differ in {diff}; a fair comparison "
                        f"needs the same model, prompts, judge and evaluation (align them with --set {diff}=...)"
                    )


def rm_reward_override(cfg: Config, preset: str, rm_dir: Path) -> str:
    """The ``--set reward.components=[...]`` that points every reward_model component of ``cfg`` at ``rm_dir``."""
    components = to_dict(cfg)["reward"]["components"]
    learned = [c for c in components if c.get("kind") == "reward_model"]
    if not learned:
        raise UserError(
            f"--algos ppo-rm: {preset}'s reward (after --set) has no reward_model component to train against; "
            "leave reward.components to the presets"
        )
    for component in learned:
        component["path"] = str(rm_dir)
    return "reward.components=" + json.dumps(components)  # JSON is YAML: --set parses it back


@dataclass
class RunSpec:
    """One training run of the comparison (or its reward model: algo ``rm``)."""

    algo: str
    seed: int
    index: int  # seed index i: seed = base seed + i
    preset: str
    config: Config
    overrides: list[str] = field(default_factory=list)  # this run's own --set, after the comparison's

    @property
    def name(self) -> str:
        return RM_DIR if self.algo == "rm" else f"{self.algo}-seed{self.index}"


@dataclass
class Plan:
    family: str
    algos: list[str]
    presets: dict[str, str]
    budget: int  # sampled completions of each online run (0 without one)
    steps: int  # steps of each online run
    batch_size: int
    seeds: list[int]
    overrides: list[str]
    judge: dict  # the reward section the family's judge-trained presets share: every run is scored by it
    runs: list[RunSpec] = field(default_factory=list)
    reward_model: RunSpec | None = None  # PPO-RM's reward model, trained once into RM_DIR

    def to_json(self) -> dict:
        rm = self.reward_model
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
            "judge": self.judge,
            "offline": {
                a: {"steps": r.config.train.steps, "pairs_per_step": r.config.preference.batch_size}
                for a in OFFLINE
                if (r := next((r for r in self.runs if r.algo == a), None))
            },
            "runs": {
                run.name: {
                    "algo": run.algo,
                    "seed": run.seed,
                    "preset": run.preset,
                    "dir": run.name,
                    "steps": run.config.train.steps,
                }
                for run in self.runs
            },
            **(
                {"reward_model": {"preset": rm.preset, "dir": rm.name, "seed": rm.seed, "steps": rm.config.train.steps}}
                if rm
                else {}
            ),
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
    family = split_preset(next(iter(presets.values())))[0]
    configs = {algo: build_config(preset=name, overrides=overrides) for algo, name in presets.items()}
    check_shared(presets, {a: to_dict(cfg) for a, cfg in configs.items()}, algos)
    online = [a for a in algos if a not in OFFLINE]
    if not online and (budget is not None or steps is not None):
        raise UserError(
            "--budget / --steps: DPO samples no completions (it trains offline on preference pairs, at its preset's "
            "train.steps); give an online algorithm too, or --set train.steps=N"
        )
    batch_sizes = {presets[a]: configs[a].rollout.batch_size for a in online}
    batch = next(iter(batch_sizes.values()), configs[algos[0]].rollout.batch_size)
    if steps is not None:
        if budget is not None and budget != steps * batch:
            raise UserError(
                f"--budget {budget} and --steps {steps} disagree (budget = steps × rollout.batch_size = "
                f"{steps * batch}); give one of them"
            )
        budget = steps * batch
    if budget is None and online:  # the PPO preset's own budget (the family's reference recipe)
        if "ppo" in configs:
            reference = configs["ppo"]
        elif f"{family}-ppo" in preset_names():
            reference = build_config(preset=f"{family}-ppo", overrides=overrides)
        else:
            reference = configs[online[0]]
        budget = reference.train.steps * reference.rollout.batch_size
    steps = equal_budget_steps(batch_sizes, budget) if online else 0
    judged = [a for a in algos if a not in LEARNED_REWARD]
    if judged:
        judge = to_dict(configs[judged[0]])["reward"]
    elif f"{family}-ppo" in preset_names():
        judge = to_dict(build_config(preset=f"{family}-ppo", overrides=overrides))["reward"]
    else:  # PPO-RM alone, no judge-trained preset to borrow one from: its own reward
        judge = to_dict(configs[algos[0]])["reward"]
    base_seed = configs[algos[0]].seed
    seed_list = [base_seed + i for i in range(seeds)]
    plan = Plan(family, list(algos), presets, budget or 0, steps, batch, seed_list, list(overrides), judge)
    own: dict[str, list[str]] = {}
    if "ppo-rm" in algos:
        rm_cfg = build_config(preset=f"{family}-rm", overrides=overrides)
        plan.reward_model = RunSpec("rm", rm_cfg.seed, 0, f"{family}-rm", rm_cfg)
        rm_cfg.output_dir = str(Path(output_dir) / RM_DIR)
        own["ppo-rm"] = [rm_reward_override(configs["ppo-rm"], presets["ppo-rm"], Path(rm_cfg.output_dir))]
    for i, seed in enumerate(seed_list):  # seed-major: an interrupted comparison already has every algorithm
        for algo in algos:
            run_steps = configs[algo].train.steps if algo in OFFLINE else steps
            extra = own.get(algo, [])
            cfg = build_config(
                preset=presets[algo], overrides=[*overrides, *extra, f"train.steps={run_steps}", f"seed={seed}"]
            )
            spec = RunSpec(algo, seed, i, presets[algo], cfg, extra)
            cfg.output_dir = str(Path(output_dir) / spec.name)
            plan.runs.append(spec)
    return plan
