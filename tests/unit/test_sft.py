"""Supervised fine-tuning: masking, packing, loss, LoRA, saving."""

import json
import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from rlhflab.config import LoraSettings
from rlhflab.data.corpus import generate_reviews
from rlhflab.models.forward import position_ids
from rlhflab.models.tiny import build_tiny_model, tiny_config, train_tokenizer
from rlhflab.sft import (
    SFTConfig,
    collate,
    encode_documents,
    lm_loss_sum,
    pack_documents,
    perplexity,
    run_sft,
    train_sft,
)

CFG = SFTConfig(lr=3e-3, max_steps=5, batch_size=16, max_length=96, warmup_ratio=0.0, device="cpu", progress=False)


@pytest.fixture(scope="module")
def texts():
    return [r.text for r in generate_reviews(200, seed=0)]


@pytest.fixture(scope="module")
def tokenizer(texts):
    return train_tokenizer(texts, vocab_size=300)


def small_model(tokenizer, seed=0):
    return build_tiny_model(tiny_config(len(tokenizer), hidden_size=32, num_layers=2, num_heads=2), seed=seed)


def test_documents_end_with_eos(tokenizer, texts):
    docs = encode_documents(tokenizer, texts[:10], max_length=512)
    for doc, text in zip(docs, texts[:10], strict=True):
        assert doc[-1] == tokenizer.eos_token_id and tokenizer.eos_token_id not in doc[:-1]
        assert tokenizer.decode(doc[:-1]) == text
    assert all(len(d) == 5 for d in encode_documents(tokenizer, texts[:10], max_length=5))


def test_pack_by_hand():
    docs = [[5, 6, 0], [7, 0], [8, 9, 10, 0]]
    # stream: 0 | 5 6 0 | 7 0 | 8 9 10 0  -> blocks of 4, the tail [10, 0] dropped
    assert pack_documents(docs, max_length=4, eos_id=0) == [[0, 5, 6, 0], [7, 0, 8, 9]]


def test_packing_gives_full_blocks_separated_by_eos(tokenizer, texts):
    docs = encode_documents(tokenizer, texts, max_length=512)
    blocks = pack_documents(docs, max_length=64, eos_id=0)
    assert all(len(b) == 64 for b in blocks)
    assert len(blocks) == (1 + sum(map(len, docs))) // 64
    flat = [t for b in blocks for t in b]
    assert flat == ([0] + [t for d in docs for t in d])[: len(flat)]  # nothing lost or reordered
    assert flat.count(0) >= len(docs)  # an EOS before every document (only a < 64-token tail is dropped)


def test_collate_left_pads_and_position_ids():
    input_ids, mask = collate([[5, 6, 7], [8]], pad_id=1)
    assert input_ids.tolist() == [[5, 6, 7], [1, 1, 8]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_forward_gets_explicit_positions_and_mask(tokenizer):
    model = small_model(tokenizer).eval()
    seen = {}

    def spy(module, args, kwargs):
        seen.update(kwargs)

    model.register_forward_pre_hook(spy, with_kwargs=True)
    input_ids, mask = collate([[5, 6, 7], [8, 9]], pad_id=1)
    with torch.no_grad():
        lm_loss_sum(model, input_ids, mask)
    assert seen["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]
    assert seen["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


def test_padded_batch_loss_equals_rows_alone(tokenizer, texts):
    model = small_model(tokenizer).eval()
    rows = encode_documents(tokenizer, [texts[0], texts[1][:20], texts[2][:45]], max_length=512)
    assert len({len(r) for r in rows}) == 3
    with torch.no_grad():
        nll, count = lm_loss_sum(model, *collate(rows, pad_id=1))
        alone = [lm_loss_sum(model, *collate([r], pad_id=1)) for r in rows]
    assert count == sum(len(r) - 1 for r in rows) == sum(n for _, n in alone)
    # token-weighted: the batch mean is the pooled mean of the rows, not the mean of row means
    torch.testing.assert_close(nll / count, sum(x for x, _ in alone) / count, rtol=1e-6, atol=1e-6)
    # and the sum equals a plain per-token computation on each row alone
    row = torch.tensor([rows[1]])
    with torch.no_grad():
        logits = model(row).logits[0, :-1]
    torch.testing.assert_close(alone[1][0], F.cross_entropy(logits, row[0, 1:], reduction="sum"))


def test_pads_cannot_change_the_loss(tokenizer, texts):
    model = small_model(tokenizer).eval()
    input_ids, mask = collate(encode_documents(tokenizer, texts[:3], max_length=512), pad_id=1)
    changed = input_ids.masked_fill(~mask, 123)
    with torch.no_grad():
        assert torch.equal(lm_loss_sum(model, input_ids, mask)[0], lm_loss_sum(model, changed, mask)[0])


def test_perplexity_is_exp_of_mean_token_nll(tokenizer, texts):
    model = small_model(tokenizer).eval()
    docs = encode_documents(tokenizer, texts[:5], max_length=512)
    with torch.no_grad():
        pairs = [lm_loss_sum(model, *collate([d], pad_id=1)) for d in docs]
    expected = math.exp(sum(float(x) for x, _ in pairs) / sum(n for _, n in pairs))
    assert perplexity(model, tokenizer, texts[:5], batch_size=2) == pytest.approx(expected, rel=1e-5)
    assert not model.training


@pytest.mark.parametrize("packing", [False, True])
def test_a_few_steps_lower_the_loss(tokenizer, texts, packing):
    model = small_model(tokenizer)
    cfg = replace(CFG, packing=packing, max_length=64, lr=1e-2)
    stats = train_sft(model, tokenizer, texts, cfg, eval_texts=texts[:50])
    assert stats["model"] is model and stats["steps"] == 5 and len(stats["losses"]) == 5
    assert stats["ppl_after"] < 0.6 * stats["ppl_before"]
    assert stats["losses"][-1] < stats["losses"][0] - 0.3
    assert stats["trainable_params"] == sum(p.numel() for p in model.parameters())
    json.dumps({k: v for k, v in stats.items() if k != "model"})


def test_training_is_reproducible(tokenizer, texts):
    cfg = replace(CFG, max_steps=3, grad_accum=2, batch_size=8)
    a = train_sft(small_model(tokenizer), tokenizer, texts, cfg)
    b = train_sft(small_model(tokenizer), tokenizer, texts, cfg)
    assert a["losses"] == b["losses"]


def test_lora_trains_only_the_adapter(tokenizer, texts):
    model = small_model(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = replace(CFG, max_steps=3, lr=1e-2, lora=LoraSettings(r=4, alpha=8, dropout=0.0))
    stats = train_sft(model, tokenizer, texts, cfg)
    peft_model = stats["model"]
    assert hasattr(peft_model, "peft_config")
    state = peft_model.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    targets = {k.split(".lora_")[0].rsplit(".", 1)[-1] for k in lora_keys}
    assert targets == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert any(k.endswith("lora_B.default.weight") and state[k].abs().sum() > 0 for k in lora_keys)
    assert stats["trainable_params"] == sum(state[k].numel() for k in lora_keys)
    base = {
        k.replace("base_model.model.", "").replace(".base_layer", ""): v for k, v in state.items() if "lora_" not in k
    }
    assert base.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(base[k], v), k


def test_run_sft_saves_a_full_model_or_an_adapter(tokenizer, texts, tmp_path):
    from peft import PeftModel

    from rlhflab.models.loading import load_causal_lm

    base_dir = tmp_path / "base"
    small_model(tokenizer).save_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)
    cfg = replace(CFG, max_steps=2)
    full = run_sft(str(base_dir), texts, tmp_path / "full", cfg, eval_texts=texts[:20])
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "full" / "sft_stats.json").read_text())["steps"] == 2
    reloaded = load_causal_lm(str(tmp_path / "full"))
    ppl = perplexity(reloaded, tokenizer, texts[:20], max_length=cfg.max_length)
    assert ppl == pytest.approx(full["ppl_after"], rel=1e-5)

    run_sft(str(base_dir), texts, tmp_path / "lora", replace(cfg, lora={"r": 2, "alpha": 4}))  # dict, as from YAML
    assert (tmp_path / "lora" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "lora" / "model.safetensors").exists()
    adapted = PeftModel.from_pretrained(load_causal_lm(str(base_dir)), str(tmp_path / "lora"))
    assert {
        name.split(".lora_A")[0].rsplit(".", 1)[-1] for name, _ in adapted.named_parameters() if "lora_A" in name
    } == {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
    assert adapted.peft_config["default"].r == 2
