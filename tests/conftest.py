"""Shared fixtures: a tiny random-weight GPT-NeoX model with a locally trained BPE tokenizer (never a download)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

SHARED_ASSETS = Path(os.environ.get("RLHFLAB_TEST_ASSETS", Path(__file__).resolve().parents[1] / "../shared/assets"))

TEXTS = [
    "the movie was great and the acting was wonderful",
    "i really hated this film because the plot was boring",
    "honestly the music was lovely but the ending was awful",
    "this is the worst film i have seen in years",
    "a beautiful story with brilliant direction and a happy ending",
] * 20


def build_tiny_model_dir(path: Path, seed: int = 0) -> Path:
    """Train a 300-token byte-level BPE and save a 2-layer random GPT-NeoX next to it."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TEXTS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        pad_token="<|padding|>",
        padding_side="left",
    )
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=len(fast),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=1,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    model = GPTNeoXForCausalLM(config)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


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
