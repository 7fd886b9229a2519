"""Shared fixtures: a tiny random-weight GPT-NeoX model with a locally trained BPE tokenizer (never a download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import DistilBertConfig, DistilBertForSequenceClassification, PreTrainedTokenizerFast

from rlhflab.models.tiny import build_tiny_model, tiny_config, train_tokenizer

SHARED_ASSETS = Path(os.environ.get("RLHFLAB_TEST_ASSETS", Path(__file__).resolve().parents[1] / "../shared/assets"))

TEXTS = [
    "the movie was great and the acting was wonderful",
    "i really hated this film because the plot was boring",
    "honestly the music was lovely but the ending was awful",
    "this is the worst film i have seen in years",
    "a beautiful story with brilliant direction and a happy ending",
] * 20


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """A 300-token byte-level BPE (the demo's own trainer) and a 2-layer random GPT-NeoX saved next to it."""
    tokenizer = train_tokenizer(TEXTS, vocab_size=300)
    config = tiny_config(len(tokenizer), hidden_size=32, num_layers=2, num_heads=4, max_positions=128)
    build_tiny_model(config, seed=seed).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


CLASSIFIER_TEXTS = ["a wonderful film with great acting", "awful and boring, the worst plot", "it was a film"]


SMALL_DISTILBERT = {"max_position_embeddings": 64, "n_layers": 1, "dim": 32, "hidden_dim": 64, "n_heads": 2}


def build_classifier(path, id2label, config_json=None, full_shape=False):
    """A random DistilBERT with its own locally trained WordPiece tokenizer, saved like a hub checkpoint."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(
        CLASSIFIER_TEXTS * 5,
        trainers.WordPieceTrainer(vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]),
    )
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )
    if config_json:
        config = DistilBertConfig(
            **{
                **json.loads(config_json.read_text()),
                "vocab_size": len(fast),
                **({} if full_shape else SMALL_DISTILBERT),
            }
        )
    else:
        config = DistilBertConfig(
            vocab_size=len(fast),
            **SMALL_DISTILBERT,
            id2label=id2label,
            label2id={v: k for k, v in id2label.items()},
        )
    torch.manual_seed(0)
    DistilBertForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


LENGTH_REWARD = "reward.components=[{name: length, kind: callable, function: 'reward_fns:length_reward'}]"


def train_argv(
    model_dir: Path,
    prompts_file: Path,
    out: Path,
    *extra: str,
    steps: int = 2,
    batch: int = 8,
    micro: int = 4,
    new_tokens: int = 6,
) -> list[str]:
    """`rlhflab train` arguments for a tiny CPU run on the fixture model, rewarded by completion length."""
    config = Path(out).parent / "empty.yaml"
    config.write_text("{}\n")
    sets = [
        f"model.name={model_dir}",
        "model.device=cpu",
        "data.source=file",
        f"data.prompts_file={prompts_file}",
        f"rollout.batch_size={batch}",
        f"train.micro_batch_size={micro}",
        f"rollout.max_new_tokens={new_tokens}",
        "tracking.progress=false",
        LENGTH_REWARD,
    ]
    return [
        "train",
        "--config",
        str(config),
        "--output-dir",
        str(out),
        "--steps",
        str(steps),
        *[arg for value in sets for arg in ("--set", value)],
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text(
        "\n".join(
            [
                "the movie was",
                "i really hated",
                "honestly the",
                "this is the",
                "a beautiful",
                "the acting was",
                "the plot",
                "the ending was",
            ]
        )
        + "\n"
    )
    return path


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"shared test assets not found at {SHARED_ASSETS} (set RLHFLAB_TEST_ASSETS)")
    return SHARED_ASSETS
