"""The configuration's schema: one dataclass per concern, each field with a one-line docstring (the string right
below it), which ``rlhflab train --help-config`` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    backbone: Literal["separate", "shared", "reference"] = "separate"
    """separate: the value head reads a critic LoRA adapter of its own (critic.r, alpha, target_modules); shared: it
    reads the policy adapter's hidden states, so one forward and one backward serve the policy and value losses
    (loss = policy + vf_coef * value; the value loss also trains the policy's LoRA unless critic.shared_grad: false);
    reference: it reads the frozen reference model's hidden states, kept from the reference log-prob pass, so the
    critic costs no forward at all and only the head learns (best with critic.head: mlp)."""
    shared_grad: bool = True
    """critic.backbone shared: the value loss back-propagates into the policy's LoRA (true), or the value head reads the
    policy pass's hidden states detached (false): still one forward and one backward, but only the head learns from the
    value loss and the policy's LoRA gets the policy loss's gradient alone."""
    head: Literal["linear", "mlp"] = "linear"
    """The value head on the critic's last hidden state (H wide), fp32, its last layer zero-initialised (values start
    at 0): linear, one Linear(H, 1); mlp, Linear(H, H) -> GELU -> Linear(H, 1), features of its own."""
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
    max_prompts: int = 0
    """Training prompts kept from the source: its first N (0 = all of them)."""
    extra_prompts: list[str] | str = field(default_factory=list)
    """Prompts added to the source's (after data.max_prompts): openings of a kind the source lacks, or demo-negative
    (rlhflab.data.demo.NEGATIVE_OPENINGS: 56 negative review openings). None may be a held-out evaluation prompt."""
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
    kind: Literal["lexicon", "classifier", "callable", "repetition", "short", "naive_bayes", "reward_model"] = "lexicon"
    """lexicon: VADER compound in [-1, 1]; classifier: a sequence classifier's label; callable: 'function';
    repetition: unique words / words of the completion; short: -1 when the completion has < min_words words;
    naive_bayes: log-odds of a naive Bayes fitted to a labelled JSONL corpus in 'model' ('demo' = the demo's);
    reward_model: the score of prompt + completion by a reward model trained with `rlhflab rm` (in 'path')."""
    weight: float = 1.0
    """Weight of this component in the summed score."""
    cap: float | None = None
    """The most this component counts in the score: weight · min(value, cap) (null = no cap); reward/<name> and the
    eval's verdicts keep the judge's own value. A lexicon capped at 0.5 pays for a positive completion, not for the
    most effusive one, so that once a group is all positive GRPO has no praise-intensity differences to amplify."""
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
    path: str | None = None
    """For kind reward_model: the run directory of `rlhflab rm` (or its final/); it scores with its own tokenizer."""
    device: str = "auto"
    """For kind classifier and reward_model: where the judge runs (auto = the policy's device rules)."""
    batch_size: int = 32
    """For kind classifier and reward_model: texts per forward pass."""
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
    name: Literal["ppo", "rloo", "grpo", "dpo", "rm"] = "ppo"
    """ppo: clipped surrogate + critic + GAE; rloo: leave-one-out baseline; grpo: group-normalised advantages;
    dpo: offline DPO on preference pairs (`rlhflab dpo`); rm: a reward model from preference pairs (`rlhflab rm`),
    not a policy. dpo and rm read the preference section."""
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
class PreferenceConfig:
    file: str | None = None
    """dpo, rm: JSONL preference pairs (prompt, chosen, rejected: strings, or message lists through the chat
    template); 'demo' = the demo's pairs (positive vs negative continuations written by the corpus grammar)."""
    eval_file: str | None = None
    """Held-out pairs (same format); null = the last preference.eval_share of the training pairs (the demo's
    pairs have their own held-out file)."""
    dataset: str | None = None
    """Instead of file: a Hugging Face dataset with prompt / chosen / rejected columns (through `datasets`)."""
    dataset_split: str = "train"
    """preference.dataset: the split trained on."""
    eval_dataset_split: str | None = None
    """preference.dataset: a held-out split; null = the last preference.eval_share of dataset_split."""
    eval_share: float = 0.1
    """Share of the training pairs held out when no held-out file or split is given (0 = none)."""
    max_eval_pairs: int = 200
    """At most this many held-out pairs are evaluated."""
    max_length: int = 128
    """Longest text in tokens: rm, prompt + answer (the end kept); dpo, each answer (its start kept)."""
    batch_size: int = 32
    """Pairs per optimisation step (train.micro_batch_size pairs per forward/backward)."""
    eval_every: int = 10
    """Steps between evaluations on the held-out pairs (0 = only before and after training)."""
    margin: float = 0.0
    """rm: the chosen answer must score this much more: loss -log sigmoid(r_chosen - r_rejected - margin)."""
    center_rewards_coefficient: float | None = None
    """rm: weight of mean (r_chosen + r_rejected)^2, which keeps scores centred at 0 (TRL's name); null = off."""
    beta: float = 0.1
    """dpo: beta, the strength of the implicit KL to the reference (higher = closer to it)."""
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    """dpo: sigmoid (-log sigmoid(beta h), the DPO paper) or ipo ((h - 1/(2 beta))^2, Azar et al. 2023)."""


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
    samples_per_listed_prompt: int = 0
    """Completions for each of eval.prompts (0 = eval.samples_per_prompt): more samples for the few openings a
    per-prompt table is judged on, fewer for the rest. Every completion counts once in positive_share."""
    batch_size: int = 0
    """Completions sampled together in evaluation (0 = rollout.batch_size). More rows a pass cost little more time
    on a CPU: 64 rows of SmolLM2 took 1.8x the time of 16 (docs/benchmarks.md)."""
    positive_threshold: float = 0.05
    """Only for a reward without a judge component: a completion counts as positive when its score exceeds this.
    Otherwise positive_share is the first judge's own verdict (VADER compound > 0.05, classifier probability > 0.5,
    naive Bayes log-odds > 0), each judge's as positive_share/<name> in eval/summary.json."""
    judges: list[RewardComponent] = field(default_factory=list)
    """Second judges, reported beside the training reward (positive when > 0); e.g. a classifier or naive_bayes."""
    every: int = 0
    """Steps between held-out evaluations of the policy during training (0 = only before/after at the end): each
    samples the held-out prompts as the final eval does (same seed, so the curve is not sampling noise between
    steps) and logs eval/positive_share (the first judge's verdict), eval/positive_share/<judge>, eval/score_mean,
    eval/ref_perplexity, eval/distinct_2 and time/eval (never counted in time/step) to the step's metrics."""
    stop_share: float | None = None
    """Stop training at the first periodic evaluation whose held-out positive share reaches this (needs
    eval.every); the run then saves, evaluates and reports as a finished one. For time-to-target benchmarks
    (bench/to_target.py). null = run all train.steps."""


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
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """Preference pairs and the losses of algorithm.name dpo and rm."""
