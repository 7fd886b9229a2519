"""The full recipe at the real Pythia-410m shape, offline: one PPO step with a reduced batch on CPU (slow).

Run with `pytest -m slow -s tests/slow`; prints the step time and the peak resident memory of the training process.
"""

import json
import math
import resource
import subprocess
import sys
import time

import pytest
import yaml
from conftest import build_classifier
from safetensors import safe_open

from rlhflab.bench import BenchOptions, build_model_dir
from rlhflab.config import load_preset_dict
from rlhflab.models.loading import load_tokenizer


@pytest.mark.slow
def test_one_ppo_step_at_pythia_410m_shape(shared_assets, tmp_path):
    pythia = shared_assets / "pythia-410m-deduped"
    model_dir = tmp_path / "pythia-410m-random"
    build_model_dir(BenchOptions(model_shape="pythia-410m", pythia_dir=str(pythia)), model_dir)  # as the bench
    with safe_open(str(model_dir / "model.safetensors"), "pt") as weights:
        n_params = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    assert 400e6 < n_params < 410e6
    tokenizer = load_tokenizer(str(model_dir))  # the saved tokenizer says pad = eos; we must not
    assert tokenizer.eos_token_id == 0 and tokenizer.pad_token_id == 1
    judge = build_classifier(
        tmp_path / "distilbert-imdb", None, shared_assets / "distilbert-imdb" / "config.json", full_shape=True
    )

    cfg = load_preset_dict("imdb-pythia-410m-ppo")
    cfg["model"].update(name=str(model_dir), device="cpu", dtype="fp32")
    cfg["reward"]["components"][0].update(model=str(judge), device="cpu")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The movie was\nI really hated this film because\nHonestly, the acting was\nThis is the worst\n")
    cfg["data"] = {"source": "file", "prompts_file": str(prompts)}
    cfg["rollout"]["batch_size"] = 4  # reduced batch: 4 completions of up to 48 tokens, micro-batches of 2
    cfg["train"]["steps"] = 1
    cfg["eval"] = {"enabled": False}
    cfg["tracking"] = {"progress": False}
    config_file = tmp_path / "pythia.yaml"
    config_file.write_text(yaml.safe_dump(cfg))

    started = time.perf_counter()
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "-m", "rlhflab", "train", "--config", str(config_file), "--output-dir", str(out)], check=True
    )
    wall = time.perf_counter() - started
    peak_rss_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB → GiB
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert abs(metrics["objective/kl"]) < 1e-5 and all(
        v is not None for k, v in metrics.items() if k.startswith(("loss/", "policy/"))
    )
    assert (out / "final" / "adapter_model.safetensors").is_file()
    print(
        f"\nPythia-410m shape, 1 PPO step (4 completions, 4 epochs): step {metrics['time/step']:.1f} s "
        f"(generate {metrics['time/generate']:.1f}, score {metrics['time/score']:.1f}, forward "
        f"{metrics['time/forward']:.1f}, update {metrics['time/update']:.1f}); process {wall:.0f} s; "
        f"peak RSS {peak_rss_gb:.2f} GiB"
    )
