"""The demo tokenizer, the tiny GPT-NeoX and the cached demo assets (built small here)."""

import json
import os

import pytest
import torch

from rlhflab.config import LoraSettings
from rlhflab.data.corpus import EVAL_OPENINGS, generate_reviews, load_reviews
from rlhflab.models import tiny
from rlhflab.models.loading import load_causal_lm, load_tokenizer, lora_targets
from rlhflab.models.tiny import DemoSpec, build_tiny_model, ensure_demo_assets, tiny_config, train_tokenizer
from rlhflab.sft import SFTConfig


@pytest.fixture(scope="module")
def texts():
    return [r.text for r in generate_reviews(200, seed=0)]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=300)


def small_model(tokenizer, seed=0):
    return build_tiny_model(tiny_config(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2), seed=seed)


def test_special_tokens_follow_pythia(tokenizer):
    assert tokenizer.convert_ids_to_tokens([0, 1]) == ["<|endoftext|>", "<|padding|>"]
    assert tokenizer.eos_token_id == 0 and tokenizer.bos_token_id == 0
    assert tokenizer.pad_token_id == 1 and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.padding_side == "left"
    assert 250 <= len(tokenizer) <= 300


def test_round_trip_and_no_special_tokens_added(tokenizer, texts):
    for text in texts[:20] + ["Unseen wörds 🎬 and  double  spaces."]:
        ids = tokenizer(text)["input_ids"]
        assert 0 not in ids and 1 not in ids  # no BOS / EOS added by the tokenizer itself
        assert tokenizer.decode(ids) == text


def test_tokenizer_is_deterministic(texts, tokenizer):
    again = train_tokenizer(texts, vocab_size=300)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_saved_tokenizer_reloads_with_pad_1_eos_0_left_padding(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    tok = load_tokenizer(str(tmp_path))
    assert (tok.pad_token_id, tok.eos_token_id, tok.padding_side) == (1, 0, "left")
    batch = tok(["The plot was bad.", "The plot was bad and the music was awful."], padding=True, return_tensors="pt")
    short = batch["attention_mask"][0]
    assert short[0] == 0 and short[-1] == 1  # padding on the left
    assert (batch["input_ids"][0][short == 0] == 1).all()


def test_model_config_and_lora_target_names(tokenizer):
    model = small_model(tokenizer)
    cfg = model.config
    assert cfg.model_type == "gpt_neox"
    assert (cfg.eos_token_id, cfg.bos_token_id, cfg.pad_token_id) == (0, 0, 1)
    assert cfg.vocab_size == len(tokenizer)
    # the default (auto) picks Pythia's own LoRA targets on the demo model, and the critic's query_key_value
    assert LoraSettings().target_modules == "auto"
    assert lora_targets(model, "auto", "lora.target_modules") == [
        "query_key_value",
        "dense",
        "dense_h_to_4h",
        "dense_4h_to_h",
    ]
    assert lora_targets(model, "auto", "critic.target_modules", "critic") == ["query_key_value"]


def test_same_seed_same_weights(tokenizer):
    a, b, c = small_model(tokenizer, 0), small_model(tokenizer, 0), small_model(tokenizer, 1)
    wa, wb, wc = (m.gpt_neox.embed_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_and_reload_gives_identical_logits(tokenizer, tmp_path):
    model = small_model(tokenizer)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = load_causal_lm(str(tmp_path))
    ids = torch.tensor([tokenizer("The acting was wonderful.")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


# ---------------------------------------------------------------------------------------------------------------
# ensure_demo_assets, with a spec small enough for a unit test

SMALL = DemoSpec(
    n_reviews=120,
    n_heldout=10,
    n_train_prompts=40,
    vocab_size=300,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    sft=SFTConfig(lr=3e-3, max_steps=2, batch_size=16, device="cpu", progress=False),
)


@pytest.fixture
def count_builds(monkeypatch):
    calls = []
    real_build = tiny._build

    def counting_build(*args, **kwargs):
        calls.append(args)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(tiny, "_build", counting_build)
    return calls


def test_demo_dir_names():
    assert tiny.demo_dir_name(0) == tiny.demo_dir_name(0, DemoSpec()) == f"demo-v{tiny.DEMO_VERSION}-seed0"
    assert tiny.demo_dir_name(0, SMALL).startswith(f"demo-v{tiny.DEMO_VERSION}-seed0-")
    assert tiny.demo_dir_name(0, SMALL) != tiny.demo_dir_name(1, SMALL)


def test_builds_once_then_reuses(tmp_path, count_builds):
    assets = ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    assert len(count_builds) == 1
    assert assets.root == tmp_path / tiny.demo_dir_name(0, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == [assets.root.name]  # no temp folder left behind
    # the files
    corpus = load_reviews(assets.corpus_file)
    assert len(corpus) == 130
    splits = [json.loads(line)["split"] for line in assets.corpus_file.read_text().splitlines()]
    assert splits.count("train") == 120 and splits.count("heldout") == 10
    prompts = assets.train_prompts_file.read_text().splitlines()
    assert len(prompts) == 40 and not set(prompts) & set(EVAL_OPENINGS)
    assert assets.eval_prompts_file.read_text().splitlines() == list(EVAL_OPENINGS)
    tok = load_tokenizer(str(assets.model_dir))
    model = load_causal_lm(str(assets.model_dir))
    assert (tok.eos_token_id, tok.pad_token_id) == (0, 1) and model.config.vocab_size == len(tok)
    manifest = assets.manifest
    assert manifest["seed"] == 0 and manifest["sft"]["ppl_after"] < manifest["sft"]["ppl_before"]
    mtime = (assets.root / "manifest.json").stat().st_mtime_ns
    # second call: reused, not rebuilt
    again = ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    assert len(count_builds) == 1
    assert again == assets and (assets.root / "manifest.json").stat().st_mtime_ns == mtime


def test_home_from_environment(tmp_path, monkeypatch, count_builds):
    monkeypatch.setenv("RLHFLAB_HOME", str(tmp_path / "home"))
    assets = ensure_demo_assets(seed=2, progress=False, spec=SMALL)
    assert assets.root.parent == tmp_path / "home" and assets.manifest["seed"] == 2


def test_interrupted_build_leaves_nothing_trusted(tmp_path, monkeypatch, count_builds):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tiny, "train_sft", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()  # real train_sft and _build again


def test_incomplete_folder_is_rebuilt_and_stale_temp_removed(tmp_path, count_builds):
    root = tmp_path / tiny.demo_dir_name(0, SMALL)
    (root / "model").mkdir(parents=True)  # e.g. copied by hand, no manifest
    stale = tmp_path / f".{root.name}.tmp-999999999-deadbeef"  # a build killed with SIGKILL
    stale.mkdir()
    assets = ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    assert len(count_builds) == 1 and (assets.model_dir / "model.safetensors").is_file()
    assert not stale.exists()
    os.remove(assets.train_prompts_file)  # a damaged build is not trusted either
    ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    assert len(count_builds) == 2


def test_rebuild_replaces_the_cached_build(tmp_path, count_builds):
    first = ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL)
    second = ensure_demo_assets(tmp_path, seed=0, progress=False, spec=SMALL, rebuild=True)
    assert len(count_builds) == 2 and second.root == first.root
    assert second.manifest["timings"] != first.manifest["timings"]
    assert [p.name for p in tmp_path.iterdir()] == [first.root.name]


def test_same_seed_builds_the_same_assets(tmp_path):
    a = ensure_demo_assets(tmp_path / "a", seed=0, progress=False, spec=SMALL)
    b = ensure_demo_assets(tmp_path / "b", seed=0, progress=False, spec=SMALL)
    for name in ("corpus.jsonl", "train_prompts.txt", "model/tokenizer.json", "model/model.safetensors"):
        assert (a.root / name).read_bytes() == (b.root / name).read_bytes(), name
