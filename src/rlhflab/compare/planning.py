"""Planning a comparison: which presets, how many steps for an equal sample budget, which seeds, which runs.

The presets ``<family>-<algo>`` (``demo-ppo``, ``demo-rloo``, ``demo-grpo``) differ only in their algorithm and
its settings; the comparison gives each the same number of sampled completions (the budget): ``steps = budget //
rollout.batch_size`` with one batch size for all. PPO samples 1 completion for each of 32 prompts per step, RLOO
and GRPO 4 for each of 8, so every algorithm sees 32 completions per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rlhflab.config import Config, build_config, preset_names, to_dict
from rlhflab.errors import UserError

ALGOS = ("ppo", "rloo", "grpo")
LABELS = {"ppo": "PPO", "rloo": "RLOO", "grpo": "GRPO"}
# the settings that must be the same for every algorithm, or the comparison compares something else too
SHARED_KEYS = ("model.name", "data", "reward", "eval", "rollout.batch_size", "rollout.max_new_tokens")


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
