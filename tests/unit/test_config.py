import dataclasses

import pytest
import yaml

from rlhflab.config import (
    Config,
    apply_override,
    build_config,
    describe_fields,
    field_docs,
    from_dict,
    load_config,
    load_preset_dict,
    preset_names,
    save_config,
    to_dict,
)
from rlhflab.errors import UserError


def test_every_preset_loads_and_validates():
    assert "demo-ppo" in preset_names()
    for name in preset_names():
        cfg = build_config(preset=name)
        assert cfg.preset == name


def test_demo_preset_values():
    cfg = build_config(preset="demo-ppo")
    assert cfg.model.name == "demo" and cfg.algorithm.name == "ppo"
    assert cfg.reward.components[0].kind == "lexicon"


def test_overrides_are_typed():
    cfg = build_config(
        preset="demo-ppo",
        overrides=[
            "train.lr=3e-5",
            "tracking.wandb=true",
            "train.steps=7",
            "algorithm.kl_target=null",
            "lora.target_modules=[dense]",
        ],
    )
    assert cfg.train.lr == pytest.approx(3e-5) and isinstance(cfg.train.lr, float)
    assert cfg.tracking.wandb is True and cfg.train.steps == 7 and cfg.algorithm.kl_target is None
    assert cfg.lora.target_modules == ["dense"]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("bogus.x=1", "unknown config key 'bogus'"),
        ("train.steps=many", "train.steps: expected an integer"),
        ("train.steps=0", "train.steps: must be a positive integer"),
        ("algorithm.loss_agg=mean", "choose one of token_mean, seq_mean, seq_sum_constant"),
        ("tracking.wandb=maybe", "tracking.wandb: expected true or false"),
        ("train.micro_batch_size=5", "must be divisible by train.micro_batch_size (5)"),
        ("rollout.samples_per_prompt=3", "divisible by rollout.samples_per_prompt (3)"),
        ("train.lr=-1", "train.lr: must be > 0"),
        ("model.roles=both", "choose one of shared, separate"),
        ("critic.head=conv", "critic.head: 'conv' is not valid; choose one of linear, mlp"),
        ("train.scoring_batch_size=0", "train.scoring_batch_size: must be a positive integer"),
        ("train.activation_checkpointing=some", "'some' is not valid; choose one of none, selective"),
        ("train.activation_checkpointing=full,distributed.fsdp=true", "together with distributed.fsdp"),
        ("algorithm.target_kl=0", "algorithm.target_kl: must be > 0 (or null = off), got 0.0"),
        ("checkpoint.keep=0", "checkpoint.keep: must be a positive integer, got 0"),  # [:-0] kept them all
        ("eval.batch_size=-4", "eval.batch_size: must be a positive integer, got -4"),  # 0 = rollout.batch_size
        ("eval.samples_per_prompt=0", "eval.samples_per_prompt: must be a positive integer, got 0"),
        ("eval.samples_per_listed_prompt=-1", "eval.samples_per_listed_prompt: must be 0 (= eval.samples_per_prompt)"),
        ("checkpoint.keep=-1", "checkpoint.keep: must be a positive integer, got -1"),
    ],
)
def test_bad_values_name_the_key(override, fragment):
    with pytest.raises(UserError) as err:
        build_config(preset="demo-ppo", overrides=override.split(","))
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(UserError, match="valid keys here: steps, lr"):
        from_dict(Config, {"train": {"nope": 1}})


def test_set_without_equals_and_unknown_preset():
    with pytest.raises(UserError, match="expected dotted.key=value"):
        apply_override({}, "train.lr")
    listed = "demo-dpo, demo-grpo, demo-ppo, demo-ppo-rm, demo-rloo, demo-rm"
    with pytest.raises(UserError, match=f"unknown preset .nope.; available presets: {listed}"):
        build_config(preset="nope")


def test_malformed_yaml_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="malformed YAML"):
        build_config(config_file=str(bad))


def test_yaml_round_trip(tmp_path):
    cfg = build_config(preset="demo-ppo", overrides=["seed=3", "algorithm.kl_target=6.0"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["algorithm"]["kl_target"] == 6.0


def test_every_field_has_a_docstring():
    def walk(cls):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.type) or f.name in {
                "model",
                "lora",
                "critic",
                "data",
                "reward",
                "rollout",
                "algorithm",
                "train",
                "eval",
                "tracking",
                "checkpoint",
                "distributed",
            }:
                continue
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"

    from rlhflab import config as c

    for cls in (
        c.Config,
        c.ModelConfig,
        c.LoraSettings,
        c.CriticConfig,
        c.DataConfig,
        c.RewardComponent,
        c.RewardConfig,
        c.RolloutConfig,
        c.AlgorithmConfig,
        c.TrainConfig,
        c.EvalConfig,
        c.TrackingConfig,
        c.CheckpointConfig,
        c.DistributedConfig,
    ):
        walk(cls)
    assert any("train.lr" in line for line in describe_fields())


def test_defaults_round_trip_through_dict():
    cfg = Config()
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_imdb_preset_has_the_reference_hyper_parameters():
    """DESIGN §1, exactly."""
    cfg = build_config(preset="imdb-pythia-410m-ppo")
    assert cfg.model.name == "EleutherAI/pythia-410m-deduped"
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.bias) == (16, 32, 0.05, "none")
    assert cfg.lora.target_modules == ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]
    assert (cfg.critic.r, cfg.critic.alpha, cfg.critic.target_modules) == (16, 32, ["query_key_value"])
    assert (cfg.data.source, cfg.data.dataset_split, cfg.data.prompt_words) == ("imdb", "train[:300]", 10)
    sentiment, rep, short = cfg.reward.components
    assert (sentiment.kind, sentiment.model, sentiment.label, sentiment.output, sentiment.input) == (
        "classifier",
        "lvwerra/distilbert-imdb",
        "POSITIVE",
        "logit",
        "prompt_completion",
    )
    assert (rep.kind, rep.weight) == ("repetition", 0.5) and (short.kind, short.weight, short.min_words) == (
        "short",
        2.0,
        5,
    )
    assert (cfg.train.lr, cfg.train.lr_schedule, cfg.train.warmup_ratio, cfg.train.steps, cfg.seed) == (
        3e-5,
        "cosine",
        0.1,
        100,
        42,
    )
    assert cfg.rollout.batch_size == 32 and cfg.train.micro_batch_size == 2 and cfg.algorithm.num_minibatches == 1
    assert (cfg.algorithm.kl_coef, cfg.algorithm.kl_target, cfg.algorithm.clip_eps, cfg.algorithm.vf_coef) == (
        0.05,
        None,
        0.2,
        0.5,
    )
    assert cfg.rollout.max_new_tokens == 48
    assert cfg.eval.prompts[:4] == [
        "The movie was",
        "I really hated this film because",
        "Honestly, the acting was",
        "This is the worst",
    ]
    for algo in ("rloo", "grpo"):
        other = build_config(preset=f"imdb-pythia-410m-{algo}")
        assert other.rollout.samples_per_prompt == 4 and other.algorithm.kl_coef == 0.05
        assert other.train.lr == cfg.train.lr and other.rollout.batch_size == 32


def test_activation_checkpointing_reads_the_booleans_of_older_configs():
    """Run directories written before the option had a ``selective`` choice hold true / false."""
    for old, new in ((True, "full"), (False, "none"), ("selective", "selective")):
        cfg = build_config(preset="demo-ppo", overrides=[f"train.activation_checkpointing={old}"])
        assert cfg.train.activation_checkpointing == new


@pytest.mark.parametrize("other", ["train.activation_checkpointing=full", "distributed.fsdp=true"])
def test_compile_refuses_the_untested_combinations(other):
    with pytest.raises(UserError, match=f"train.compile: not supported together with {other.split('=')[0]}"):
        build_config(overrides=["train.compile=true", other])
    build_config(overrides=["train.compile=true"])  # alone it is fine


@pytest.mark.parametrize("bias", ["all", "lora_only"])
def test_lora_bias_other_than_none_is_refused(bias):
    """No bias reaches the optimiser (and a trained bias would move the shared reference): refuse, one line."""
    with pytest.raises(UserError) as err:
        build_config(preset="demo-ppo", overrides=[f"lora.bias={bias}"])
    assert f"lora.bias: {bias!r}" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("preset", "expected"), [("demo-ppo", True), ("demo-rloo", False), ("demo-grpo", False)])
def test_whiten_advantages_defaults_per_algorithm(preset, expected):
    """null (the default) = auto: PPO whitens, RLOO and GRPO do not (a batch-std scaling would undo Dr. GRPO)."""
    data = load_preset_dict(preset)
    data["algorithm"].pop("whiten_advantages", None)
    cfg = from_dict(Config, data)
    assert cfg.algorithm.whiten_advantages is None
    assert cfg.algorithm.whitens() is expected
    cfg.algorithm.whiten_advantages = not expected  # an explicit value wins
    assert cfg.algorithm.whitens() is (not expected)


def test_truncation_options_are_off_by_default_and_checked():
    cfg = build_config(preset="demo-grpo")
    assert cfg.reward.missing_eos_penalty is None and cfg.rollout.mask_truncated_completions is False
    with pytest.raises(UserError, match=r"^rollout.mask_truncated_completions: .*rloo and grpo"):
        build_config(preset="demo-ppo", overrides=["rollout.mask_truncated_completions=true"])
    with pytest.raises(UserError, match=r"^reward.missing_eos_penalty: must be >= 0"):
        build_config(preset="demo-ppo", overrides=["reward.missing_eos_penalty=-1"])


def test_demo_models_name_presets_that_exist():
    from rlhflab.cli import DEMO_MODELS

    for preset, _ in DEMO_MODELS.values():
        assert build_config(preset=preset).preset == preset
    smol = build_config(preset="smollm2-ppo")
    assert smol.model.name == "smollm2-135m" and smol.data.chat_template == "off"
    assert smol.lora.target_modules == "auto"  # a Llama: the targets come from the model
