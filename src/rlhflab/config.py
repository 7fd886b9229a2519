"""Configuration: one dataclass per concern, YAML presets, ``--set`` overrides and validation.

Every field has a one-line docstring (the string right below it), which ``rlhflab train --help-config`` prints.
Unknown keys, malformed values and failed cross-field checks raise :class:`UserError` with one line that names
the key and what would be valid.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhflab.errors import UserError


@dataclass
class ModelConfig:
    name: str = "demo"
    """Policy base model: a hub id, a local directory, or 'demo' for the offline demo model (built on first use)."""
    dtype: str = "auto"
    """Weights dtype: auto (bf16 on a capable GPU, or on a CPU with bf16 instructions for a model 512 wide or
    more; else fp32), fp32, bf16 or fp16."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    trust_remote_code: bool = False
    """Allow custom modelling code from the hub. Off unless you trust the repository."""
    roles: Literal["shared", "separate"] = "shared"
    """shared: one base for policy (LoRA), critic (LoRA + head) and reference (adapters off); separate: copies."""
    sft_adapter: str | None = None
    """A PEFT LoRA adapter (hub id or dir, e.g. from `rlhflab sft`) merged into the base first: the reference = SFT."""


@dataclass
class LoraSettings:
    r: int = 16
    """LoRA rank of the policy adapter."""
    alpha: int = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = 0.05
    """LoRA dropout; only active when train.dropout is true (PPO's step-0 invariants need it off)."""
    bias: Literal["none", "all", "lora_only"] = "none"
    """Which biases the adapter trains: only none is supported (all / lora_only are refused: the optimiser takes
    LoRA matrices only, and with model.roles shared a trained bias would move the reference model too)."""
    target_modules: list[str] | str = "auto"
    """Module names that receive LoRA, or auto: every linear layer of the decoder blocks (LM head excluded)."""


@dataclass
class CriticConfig:
    granularity: Literal["token", "sequence"] = "token"
    """token: a value per response token + GAE; sequence: one value per sequence, advantage = R - V."""
    r: int = 16
    """LoRA rank of the critic adapter."""
    alpha: int = 32
    """LoRA alpha of the critic adapter."""
    target_modules: list[str] | str = "auto"
    """Module names that receive the critic's LoRA, or auto: the attention's input projections (query/key/value)."""


@dataclass
class DataConfig:
    source: Literal["demo", "file", "imdb"] = "demo"
    """Where training prompts come from: demo (the offline corpus), file (data.prompts_file) or imdb (datasets)."""
    prompts_file: str | None = None
    """Training prompts: a text file (one per line), JSONL or CSV with a header (a 'prompt' or 'text' field)."""
    eval_prompts_file: str | None = None
    """Held-out evaluation prompts (same formats); defaults to the demo's held-out openings."""
    dataset_split: str = "train[:300]"
    """data.source imdb: the split of stanfordnlp/imdb whose review openings are the prompts."""
    eval_dataset_split: str | None = None
    """data.source imdb: a split whose review openings are held-out evaluation prompts, after eval.prompts (e.g.
    test[:60], reviews never trained on); null = only eval.prompts (or the first training prompts)."""
    prompt_words: int = 10
    """data.source imdb: words of each review kept as its prompt."""
    max_prompt_tokens: int = 32
    """Prompts longer than this are cut (from the left, keeping their end)."""
    chat_template: Literal["auto", "on", "off"] = "auto"
    """Wrap each prompt as the user turn of the tokenizer's chat template (generation prompt added). auto: on for a
    tokenizer with a template and data.source file (your own prompts, taken as instructions); off for the demo's
    and IMDB's openings, which are continued. The reward always sees the plain prompt and completion."""


@dataclass
class RewardComponent:
    name: str = "vader"
    """Name logged as reward/<name>."""
    kind: Literal["lexicon", "classifier", "callable", "repetition", "short", "naive_bayes"] = "lexicon"
    """lexicon: VADER compound in [-1, 1]; classifier: a sequence classifier's label; callable: 'function';
    repetition: unique words / words of the completion; short: -1 when the completion has < min_words words;
    naive_bayes: log-odds of a naive Bayes fitted to a labelled JSONL corpus in 'model' ('demo' = the demo's)."""
    weight: float = 1.0
    """Weight of this component in the summed score."""
    input: Literal["completion", "prompt_completion"] = "completion"
    """What lexicon and classifier judge: the completion alone, or the prompt followed by the completion."""
    function: str | None = None
    """For kind callable: 'module:function' called as fn(prompts, completions) -> list[float]."""
    model: str | None = None
    """For kind classifier: hub id or local directory of an AutoModelForSequenceClassification (own tokenizer)."""
    label: str = "POSITIVE"
    """For kind classifier: the label scored, looked up by name in the model's id2label."""
    output: Literal["logit", "probability"] = "logit"
    """For kind classifier: the label's raw logit or its softmax probability."""
    device: str = "auto"
    """For kind classifier: where the judge runs (auto = the policy's device rules)."""
    batch_size: int = 32
    """For kind classifier: texts per forward pass."""
    min_words: int = 5
    """For kind short: completions with fewer words score -1 (use weight 2 for the reference's -2 penalty)."""


@dataclass
class RewardConfig:
    components: list[RewardComponent] = field(default_factory=lambda: [RewardComponent()])
    """Weighted sum of reward components; each is logged as reward/<name>."""
    missing_eos_penalty: float | None = None
    """Subtracted from the training score of every completion that did not end with EOS within
    rollout.max_new_tokens (TRL's missing_eos_penalty; objective/scores includes it, reward/<name> and the eval do
    not). null = off."""


@dataclass
class RolloutConfig:
    batch_size: int = 32
    """Completions sampled per optimisation step (prompts per step x samples_per_prompt)."""
    samples_per_prompt: int = 1
    """k completions per prompt (1 for PPO; >= 2 for RLOO and GRPO)."""
    max_new_tokens: int = 32
    """Longest completion, in tokens."""
    temperature: float = 1.0
    """Sampling temperature; the same temperature scales the logits when scoring (same distribution)."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off; RL should sample the full distribution)."""
    top_p: float = 1.0
    """Nucleus sampling threshold (1 = off)."""
    mask_truncated_completions: bool = False
    """rloo, grpo: completions without EOS within max_new_tokens get no policy loss (their tokens are masked out of it;
    they still count in their group's baseline), as TRL's mask_truncated_completions."""


@dataclass
class AlgorithmConfig:
    name: Literal["ppo", "rloo", "grpo"] = "ppo"
    """ppo: clipped surrogate + critic + GAE; rloo: leave-one-out baseline; grpo: group-normalised advantages."""
    ppo_epochs: int = 4
    """Passes (K) over each rollout batch."""
    num_minibatches: int = 1
    """Minibatches (M) per epoch; one optimiser step each."""
    clip_eps: float = 0.2
    """Policy ratio clip range epsilon."""
    clip_eps_high: float | None = None
    """Upper ratio clip 1 + clip_eps_high (DAPO's clip-higher); null = clip_eps."""
    clip_eps_value: float = 0.2
    """Value clip range around the rollout-time values."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    gamma: float = 1.0
    """Discount over tokens."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    kl_coef: float = 0.05
    """beta. ppo: per-token k1 in the reward; rloo: summed k1 subtracted from R; grpo: k3 per token in the loss."""
    kl_target: float | None = None
    """Adaptive KL controller target (summed KL per sequence); null = fixed kl_coef."""
    kl_horizon: int = 10000
    """Adaptive controller horizon, in samples (Ziegler et al. 2019)."""
    target_kl: float | None = None
    """Early stop of the K epochs (cleanrl): after an epoch whose minibatches' mean policy/approxkl exceeds this,
    the remaining epochs are skipped (logged as policy/epochs; the lr schedule still advances). null = off. Not
    kl_target, which is the adaptive beta's target for the KL to the reference."""
    whiten_advantages: bool | None = None
    """Whiten advantages over the valid tokens of the batch (mean 0, std 1). null = auto: true for ppo (as TRL's
    PPO and cleanrl), false for rloo and grpo (as TRL's RLOO and GRPO, and the papers): their advantages are already
    baselined per prompt, and a batch-std scaling would undo Dr. GRPO's unscaled R - mean (group_scale false)."""
    loss_agg: Literal["token_mean", "seq_mean", "seq_sum_constant"] = "token_mean"
    """How per-token losses become one number (seq_sum_constant = Dr. GRPO: sum / (rows x rollout.max_new_tokens))."""
    rloo_baseline: Literal["leave_one_out", "batch_mean", "none"] = "leave_one_out"
    """rloo: the baseline subtracted from each sample's reward."""
    group_scale: bool = True
    """grpo: divide by the group's std (false = Dr. GRPO's mean-centring only)."""

    def whitens(self) -> bool:
        """whiten_advantages, with null (auto) resolved per algorithm: ppo true, rloo and grpo false."""
        return self.name == "ppo" if self.whiten_advantages is None else self.whiten_advantages


@dataclass
class TrainConfig:
    steps: int = 40
    """Optimisation steps, each on a fresh rollout batch."""
    lr: float = 3e-5
    """Peak learning rate (AdamW)."""
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule after warm-up."""
    warmup_ratio: float = 0.1
    """Share of optimiser updates (n of them) spent warming up linearly: update u runs at lr · (u + 1) / (n + 1), so
    the first one already moves (rlhflab.schedule.lr_factor)."""
    micro_batch_size: int = 8
    """Rows per forward/backward; gradients accumulate over the minibatch (exactly like one big batch)."""
    scoring_batch_size: int = 8
    """Rows per no-grad scoring pass (old logprobs, reference logprobs, values), rounded down to whole micro-batches:
    more rows run faster matrix products; the pass holds (rows × new tokens × vocabulary) floats of logits."""
    activation_checkpointing: Literal["none", "selective", "full"] = "none"
    """Recompute activations in backward instead of keeping them. ``full``: each transformer block keeps only its
    input (much less memory per micro-batch, one more forward pass of the policy and critic per micro-batch).
    ``selective``: blocks also keep their matrix products' and attention's outputs and recompute only the cheap
    rest (norms, activation functions, LoRA up-projections): a third less activation memory for +6-27 % time per
    micro-step at 410 M on a CPU (the more rows per micro-batch, the less it costs; docs/benchmarks.md)."""
    compile: bool = False
    """torch.compile each transformer block in the scoring and update passes (generation stays eager): the first
    step pays the compilation (about a minute on a CPU), later ones run fused kernels; for long runs of small
    models (docs/benchmarks.md). On a CPU it needs a C++ compiler."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip over all trained parameters."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_nonfinite_in_a_row: int = 3
    """Stop after this many optimiser updates in a row with a non-finite loss or gradient (each is skipped)."""
    dropout: bool = False
    """Keep dropout (LoRA dropout included) on during RL; off by default so step 0 has ratio = 1, KL = 0."""


@dataclass
class EvalConfig:
    enabled: bool = True
    """Evaluate the starting and trained model on the held-out prompts at the end of training."""
    prompts: list[str] = field(default_factory=list)
    """Held-out prompts evaluated first (then data.eval_prompts_file's); e.g. the published table's openings."""
    max_prompts: int = 64
    """At most this many held-out prompts."""
    samples_per_prompt: int = 1
    """Completions per held-out prompt."""
    positive_threshold: float = 0.05
    """Only for a reward without a judge component: a completion counts as positive when its score exceeds this.
    Otherwise positive_share is the first judge's own verdict (VADER compound > 0.05, classifier probability > 0.5,
    naive Bayes log-odds > 0), each judge's as positive_share/<name> in eval/summary.json."""
    judges: list[RewardComponent] = field(default_factory=list)
    """Second judges, reported beside the training reward (positive when > 0); e.g. a classifier or naive_bayes."""


@dataclass
class TrackingConfig:
    progress: bool = True
    """Show a progress bar with live score and KL."""
    wandb: bool = False
    """Log to Weights & Biases (set WANDB_MODE=offline to run without network)."""
    tensorboard: bool = False
    """Write TensorBoard event files under the run directory."""
    project: str = "rlhflab"
    """W&B project name."""
    run_name: str | None = None
    """Run name for trackers; defaults to the run directory's name."""
    samples_every: int = 10
    """Steps between sample tables (prompt, completion, score) in samples.jsonl, W&B and TensorBoard (0 = never)."""
    samples_count: int = 8
    """Rows per sample table (the first completions of the step's batch)."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Steps between checkpoints (0 = only the final one)."""
    keep: int = 2
    """How many step checkpoints to keep (the newest; at least 1)."""


@dataclass
class DistributedConfig:
    fsdp: bool = False
    """Under torchrun (2+ processes): shard the frozen base weights over the processes (FSDP2; docs/distributed.md)."""


@dataclass
class FastPathsConfig:
    """Each fast path computes what the plain path computes, with less memory or time (rlhflab.fastpaths)."""

    lora_in_place: bool = True
    """LoRA layers add their update into the base layer's output in place: the same numbers, fewer freed blocks
    (never under train.activation_checkpointing selective, which keeps that output). false = peft's own forward."""
    reserved_kv_cache: bool = True
    """Generation's KV cache reserves each layer's room at its first write instead of copying it longer every token:
    the same tokens. false = transformers' DynamicCache."""
    hidden_logprobs: bool = True
    """Log-probs from the last hidden states, vocabulary block by block, where the LM head is a plain frozen linear
    layer: no (rows x tokens x vocabulary) logits, equal within float rounding. false = from the logits."""


@dataclass
class Config:
    seed: int = 42
    """The one seed that controls data order, sampling and initialisation."""
    output_dir: str | None = None
    """Run directory; defaults to runs/<preset>-<time>."""
    preset: str | None = None
    """Name of the preset this config started from (informational)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    critic: CriticConfig = field(default_factory=CriticConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    fast_paths: FastPathsConfig = field(default_factory=FastPathsConfig)
    """Opt-outs of the fast paths (each is on by default and tested against its plain path)."""


# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the harmless cases (int → float, '3e-5' → float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise UserError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and bad values raise :class:`UserError`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(names)}")
    data = {k: _LEGACY_VALUES.get(prefix + k, {}).get(v, v) if isinstance(v, bool) else v for k, v in data.items()}
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


_LEGACY_VALUES = {
    "train.activation_checkpointing": {False: "none", True: "full"},
    "data.chat_template": {False: "off", True: "on"},  # YAML reads a bare on / off as a boolean
}
"""Values that older configs (and run directories) hold for options that have since grown more choices, and
booleans that YAML makes of words."""


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = nxt.value.value  # type: ignore[union-attr]
    return docs


# ----------------------------------------------------------------------------------------------------------------
# presets, files, overrides


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("rlhflab.presets").iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{source}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of config sections at the top level")
    return data


def load_preset_dict(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    text = resources.files("rlhflab.presets").joinpath(f"{name}.yaml").read_text()
    data = _read_yaml(text, f"preset {name}")
    data.setdefault("preset", name)
    return data


def load_file_dict(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: file {path!r} does not exist")
    return _read_yaml(p.read_text(), path)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a nested dict; the value is parsed as YAML (so 'true', '3', 'null')."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected dotted.key=value, e.g. --set train.lr=1e-5")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Preset or file, then overrides, then validation: the one way a Config is made from user input."""
    if preset and config_file:
        raise UserError("give either --preset or --config, not both")
    data = load_preset_dict(preset) if preset else load_file_dict(config_file) if config_file else {}
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(path: Path) -> Config:
    cfg = from_dict(Config, load_file_dict(str(path)))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks; each failure names the keys involved."""

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UserError(message)

    r, t, a = cfg.rollout, cfg.train, cfg.algorithm
    for key, value in [
        ("rollout.batch_size", r.batch_size),
        ("rollout.samples_per_prompt", r.samples_per_prompt),
        ("rollout.max_new_tokens", r.max_new_tokens),
        ("train.steps", t.steps),
        ("train.micro_batch_size", t.micro_batch_size),
        ("train.scoring_batch_size", t.scoring_batch_size),
        ("algorithm.ppo_epochs", a.ppo_epochs),
        ("algorithm.num_minibatches", a.num_minibatches),
        ("lora.r", cfg.lora.r),
        ("critic.r", cfg.critic.r),
        ("data.max_prompt_tokens", cfg.data.max_prompt_tokens),
        ("eval.max_prompts", cfg.eval.max_prompts),
        ("train.max_nonfinite_in_a_row", t.max_nonfinite_in_a_row),
        ("checkpoint.keep", cfg.checkpoint.keep),
    ]:
        need(value > 0, f"{key}: must be a positive integer, got {value}")
    for key, value in [
        ("train.lr", t.lr),
        ("rollout.temperature", r.temperature),
        ("rollout.top_p", r.top_p),
        ("algorithm.clip_eps", a.clip_eps),
        ("algorithm.clip_eps_value", a.clip_eps_value),
    ]:
        need(value > 0, f"{key}: must be > 0, got {value}")
    need(r.top_p <= 1, f"rollout.top_p: must be in (0, 1], got {r.top_p}")
    need(r.top_k >= 0, f"rollout.top_k: must be >= 0 (0 = off), got {r.top_k}")
    need(0 <= t.warmup_ratio < 1, f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}")
    need(a.kl_coef >= 0, f"algorithm.kl_coef: must be >= 0, got {a.kl_coef}")
    need(a.target_kl is None or a.target_kl > 0, f"algorithm.target_kl: must be > 0 (or null = off), got {a.target_kl}")
    need(
        cfg.lora.bias == "none",
        f"lora.bias: {cfg.lora.bias!r} is not supported, only 'none' (biases are not trained, and a trained bias "
        "would also move the shared reference model)",
    )
    need(
        0 <= a.gamma <= 1 and 0 <= a.gae_lambda <= 1,
        f"algorithm.gamma / algorithm.gae_lambda: must be in [0, 1], got {a.gamma} / {a.gae_lambda}",
    )
    need(
        r.batch_size % r.samples_per_prompt == 0,
        f"rollout.batch_size ({r.batch_size}) must be divisible by rollout.samples_per_prompt ({r.samples_per_prompt})",
    )
    need(
        r.batch_size % a.num_minibatches == 0,
        f"rollout.batch_size ({r.batch_size}) must be divisible by algorithm.num_minibatches ({a.num_minibatches})",
    )
    minibatch = r.batch_size // a.num_minibatches
    need(
        minibatch % t.micro_batch_size == 0,
        f"minibatch size rollout.batch_size / algorithm.num_minibatches = {minibatch} must be divisible by "
        f"train.micro_batch_size ({t.micro_batch_size})",
    )
    need(
        a.name == "ppo" or r.samples_per_prompt >= 2,
        f"rollout.samples_per_prompt: {a.name} compares samples of one prompt, so it needs >= 2, "
        f"got {r.samples_per_prompt}",
    )
    for key, targets in (
        ("lora.target_modules", cfg.lora.target_modules),
        ("critic.target_modules", cfg.critic.target_modules),
    ):
        need(
            targets == "auto" or (isinstance(targets, list) and len(targets) > 0),
            f"{key}: expected auto or a non-empty list of module names, got {targets!r}",
        )
    need(len(cfg.reward.components) > 0, "reward.components: at least one reward component is needed")
    penalty = cfg.reward.missing_eos_penalty
    need(penalty is None or penalty >= 0, f"reward.missing_eos_penalty: must be >= 0 (or null = off), got {penalty}")
    need(
        not r.mask_truncated_completions or a.name != "ppo",
        "rollout.mask_truncated_completions: supported for rloo and grpo only (PPO's critic learns from every row)",
    )
    for c in cfg.reward.components + cfg.eval.judges:
        need(
            c.kind != "callable" or bool(c.function and ":" in c.function),
            f"reward.components: {c.name!r} of kind callable needs function: 'module:function'",
        )
    names = [c.name for c in cfg.reward.components]
    need(len(set(names)) == len(names), f"reward.components: names must be unique, got {names}")
    need(
        cfg.data.source != "file" or bool(cfg.data.prompts_file),
        "data.prompts_file: required when data.source is 'file'",
    )
    need(cfg.checkpoint.every >= 0, f"checkpoint.every: must be >= 0, got {cfg.checkpoint.every}")
    need(
        not cfg.distributed.fsdp or cfg.model.roles == "shared",
        "distributed.fsdp: needs model.roles=shared (one base model to shard for the three roles)",
    )
    need(
        not (cfg.distributed.fsdp and t.activation_checkpointing != "none"),
        "train.activation_checkpointing: not supported together with distributed.fsdp yet (untested); turn one off",
    )
    for other, on in (
        ("train.activation_checkpointing", t.activation_checkpointing != "none"),
        ("distributed.fsdp", cfg.distributed.fsdp),
    ):
        need(not (t.compile and on), f"train.compile: not supported together with {other} yet (untested); turn one off")
    tr = cfg.tracking
    need(tr.samples_every >= 0, f"tracking.samples_every: must be >= 0 (0 = never), got {tr.samples_every}")
    need(tr.samples_count > 0, f"tracking.samples_count: must be a positive integer, got {tr.samples_count}")


def describe_fields(cls: type = Config, prefix: str = "") -> list[str]:
    """Lines 'key (type, default): doc' for every field, nested sections included (for --help-config)."""
    docs, lines = field_docs(cls), []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe_fields(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
            default = [to_dict(d) for d in default]
        lines.append(f"  {prefix}{f.name} = {default!r}  ({_type_name(tp)})\n      {docs.get(f.name, '')}")
    return lines
