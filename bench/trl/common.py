"""Shared pieces of the TRL yardstick: the same random-weight models, prompts and VADER judge as `rlhflab bench`.

TRL is never a dependency of rlhflab: these scripts run in their own virtual environment (see README.md here).
The model and the prompts are built by rlhflab's own builder (imported from this checkout's src/, not installed),
so both sides train the very same weights on the very same prompts.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer  # noqa: E402

from rlhflab.models.loading import DTYPES  # noqa: E402, F401  (the dtype names rlhflab takes)

LORA_TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]  # DESIGN §1, policy
CRITIC_TARGETS = ["query_key_value"]  # DESIGN §1, critic
# TrainingArguments every yardstick run shares: CPU, fp32, no checkpoints or trackers, a log line per step, seed 42
RUN_ARGS = dict(save_strategy="no", report_to="none", logging_steps=1, use_cpu=True, bf16=False, seed=42)


def build_assets(shape: str, out: Path, dtype: str = "fp32") -> tuple[Path, list[str]]:
    """(model dir, prompts): rlhflab.bench's builder, so the weights (saved in ``dtype``) and prompts equal the
    benchmark's."""
    from rlhflab.bench import BenchOptions, build_model_dir, write_prompts

    model_dir = out / f"model-{shape}-{dtype}"
    if not (model_dir / "config.json").is_file():
        model_dir.mkdir(parents=True, exist_ok=True)
        build_model_dir(BenchOptions(model_shape=shape, dtype=dtype), model_dir)
    prompts = write_prompts(out / "prompts.txt").read_text().splitlines()
    return model_dir, prompts


def value_model(model_dir: Path, pad_token_id: int, dtype: torch.dtype = torch.float32):
    """TRL's PPO critic at rlhflab's settings: a second copy of the base as a sequence classifier, base frozen, LoRA
    r 16 on query_key_value and a trainable, zero-initialised score head (weights in ``dtype``)."""
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=dtype)
    model.config.pad_token_id = pad_token_id
    model.requires_grad_(False)
    inject_adapter_in_model(LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, target_modules=CRITIC_TARGETS), model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or name.startswith("score"))
    torch.nn.init.zeros_(model.score.weight)
    return model


def load_tokenizer(model_dir: Path):
    """Left padding; pad = <|padding|> (id 1), never EOS, exactly as rlhflab loads it."""
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if "<|padding|>" in tok.get_vocab():
        tok.pad_token = "<|padding|>"
    return tok


_VADER = SentimentIntensityAnalyzer()


def vader(texts: list[str]) -> list[float]:
    return [_VADER.polarity_scores(t)["compound"] for t in texts]


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class StepTimer(TrainerCallback):
    """Wall time of each optimiser step (TRL's global step) and the RSS peak so far after it."""

    def __init__(self):
        self.last = None
        self.times: list[float] = []
        self.rss: list[int] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.rss.append(peak_rss_bytes())
        self.last = now


def report(name: str, settings: dict, step_seconds: list[float], peak_rss: int, json_path: str | None) -> None:
    """Per rollout step: the first step pays one-off costs, so the mean is over the later ones when there are."""
    measured = step_seconds[1:] or step_seconds
    out = {
        "trainer": name,
        "settings": settings,
        "step_seconds_each": step_seconds,
        "step_seconds": sum(measured) / len(measured),
        "measured_steps": f"{2 if len(step_seconds) > 1 else 1}..{len(step_seconds)}",
        "peak_rss_bytes": peak_rss,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None,
    }
    print(
        f"{name}: {out['step_seconds']:.2f} s per rollout step (mean of steps {out['measured_steps']}; each "
        f"{', '.join(f'{s:.2f}' for s in step_seconds)}), peak RSS {peak_rss / 2**30:.2f} GiB"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1) + "\n")
