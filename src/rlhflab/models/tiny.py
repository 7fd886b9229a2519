"""The offline demo model: a BPE tokenizer and a tiny GPT-NeoX trained on the synthetic review corpus, cached.

``ensure_demo_assets()`` builds, on first use, under ``$RLHFLAB_HOME`` (default ``~/.cache/rlhflab``)::

    demo-v1-seed0/
      model/               tiny GPT-NeoX after SFT + its tokenizer (save_pretrained, safetensors)
      corpus.jsonl         {"text", "sentiment", "split"} per line ("train" reviews, "heldout" for perplexity)
      train_prompts.txt    RL training prompts, one per line (openings of training reviews)
      eval_prompts.txt     held-out evaluation openings (corpus.EVAL_OPENINGS), one per line
      manifest.json        what was built, how, how long it took, held-out perplexity before / after SFT

and returns the paths. A later call finds ``manifest.json`` and reuses the folder. The build happens in a hidden
temporary folder that is renamed into place only when complete, so an interrupted build is never trusted.

The model is the Pythia architecture in miniature (GPT-NeoX, parallel residual, partial rotary embeddings), so
LoRA targets the same module names (``query_key_value``, ``dense``, ``dense_h_to_4h``, ``dense_4h_to_h``) and
the tokenizer follows Pythia's conventions: ``<|endoftext|>`` = id 0 is BOS and EOS, ``<|padding|>`` = id 1 pads.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from rlhflab.cache import build_once, default_home
from rlhflab.data.corpus import EVAL_OPENINGS
from rlhflab.data.demo import N_HELDOUT, N_REVIEWS, N_TRAIN_PROMPTS, write_demo_data
from rlhflab.sft import SFTConfig, train_sft

EOS_TOKEN = "<|endoftext|>"  # id 0: end of text, also BOS (Pythia)
PAD_TOKEN = "<|padding|>"  # id 1
DEMO_VERSION = 1  # bump when the corpus, tokenizer, model or SFT recipe changes: old caches are then ignored


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, model_max_length: int = 256
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``: ``<|endoftext|>`` = 0 (EOS, BOS), ``<|padding|>`` = 1, left padding.

    Byte-level means any string encodes (unknown words fall back to bytes) and decoding round-trips exactly. The
    trained vocabulary may be smaller than ``vocab_size`` when the texts have fewer distinct merges.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    assert tok.token_to_id(EOS_TOKEN) == 0 and tok.token_to_id(PAD_TOKEN) == 1
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="left",
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def tiny_config(
    vocab_size: int, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4, max_positions: int = 256
) -> GPTNeoXConfig:
    """A miniature Pythia: GPT-NeoX, parallel residual, rotary on 25 % of each head, untied embeddings."""
    return GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=4 * hidden_size,
        max_position_embeddings=max_positions,
        hidden_act="gelu",
        use_parallel_residual=True,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        attention_dropout=0.0,
        hidden_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=1,
    )


def build_tiny_model(config: GPTNeoXConfig, seed: int = 0) -> GPTNeoXForCausalLM:
    """Randomly initialised model, the same weights for the same ``seed`` (the global RNG is left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPTNeoXForCausalLM(config).eval()


# ---------------------------------------------------------------------------------------------------------------
# The cached demo assets


@dataclass
class DemoSpec:
    """How big the demo assets are; the defaults are the published demo (tests shrink them)."""

    n_reviews: int = N_REVIEWS
    """Training reviews for the tokenizer and SFT."""
    n_heldout: int = N_HELDOUT
    """Further reviews, never trained on, for perplexity."""
    n_train_prompts: int = N_TRAIN_PROMPTS
    """RL training prompts written to ``train_prompts.txt``."""
    vocab_size: int = 2048
    """Target BPE vocabulary size."""
    hidden_size: int = 128
    """Width of the tiny GPT-NeoX."""
    num_layers: int = 4
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    sft: SFTConfig = field(
        default_factory=lambda: SFTConfig(
            lr=5e-3,
            epochs=5.0,
            batch_size=32,
            max_length=128,
            packing=False,
            warmup_ratio=0.05,
            weight_decay=0.01,
            device="cpu",
        )
    )
    """Supervised training recipe (``seed`` and ``progress`` are set by ``ensure_demo_assets``). Padded, not
    packed: every review then starts at position 0 with no context, exactly as RL prompts do. On CPU so that the
    cache is the same whether or not the building machine has a GPU (the model is too small to gain much)."""


@dataclass(frozen=True)
class DemoAssets:
    """Paths of a complete demo build."""

    root: Path
    """The build's folder, e.g. ``~/.cache/rlhflab/demo-v1-seed0``."""
    model_dir: Path
    """SFT model and tokenizer: a directory for ``load_causal_lm`` / ``load_tokenizer``."""
    train_prompts_file: Path
    """RL training prompts, one per line."""
    eval_prompts_file: Path
    """Held-out evaluation openings, one per line."""
    corpus_file: Path
    """The review corpus, JSONL."""
    manifest: dict
    """Build record: seed, spec, timings, perplexity before / after SFT."""


def demo_dir_name(seed: int, spec: DemoSpec | None = None) -> str:
    """``demo-v1-seed0``; a non-default spec adds a hash of itself so that it never shadows the real build."""
    name = f"demo-v{DEMO_VERSION}-seed{seed}"
    if spec is not None and spec != DemoSpec():
        name += "-" + hashlib.sha1(json.dumps(asdict(spec), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return name


def _assets(root: Path) -> DemoAssets | None:
    """The assets in ``root`` if it holds a complete build of this version, else None."""
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    assets = DemoAssets(
        root=root,
        model_dir=root / "model",
        train_prompts_file=root / "train_prompts.txt",
        eval_prompts_file=root / "eval_prompts.txt",
        corpus_file=root / "corpus.jsonl",
        manifest=manifest,
    )
    files = (
        assets.train_prompts_file,
        assets.eval_prompts_file,
        assets.corpus_file,
        assets.model_dir / "config.json",
        assets.model_dir / "model.safetensors",
        assets.model_dir / "tokenizer.json",
    )
    if manifest.get("version") != DEMO_VERSION or not all(f.is_file() for f in files):
        return None
    return assets


def _build(out: Path, seed: int, spec: DemoSpec, progress: bool) -> dict:
    """Write every demo file into the empty folder ``out``; return the manifest."""

    def say(msg: str) -> None:
        _say(progress, msg)

    timings: dict[str, float] = {}
    # 1. corpus and prompts; the held-out reviews continue the same seeded stream, so they are distinct
    t0 = time.perf_counter()
    train, heldout, prompts = write_demo_data(out, seed, spec.n_reviews, spec.n_heldout, spec.n_train_prompts)
    timings["corpus_s"] = time.perf_counter() - t0
    counts = Counter(r.sentiment for r in train)
    say(
        f"corpus: {len(train)} reviews ({', '.join(f'{v} {k}' for k, v in counts.items())}) + {len(heldout)} "
        f"held out, {len(prompts)} RL prompts, {len(EVAL_OPENINGS)} eval openings [{timings['corpus_s']:.1f} s]"
    )

    # 2. tokenizer
    t0 = time.perf_counter()
    tokenizer = train_tokenizer((r.text for r in train), spec.vocab_size)
    timings["tokenizer_s"] = time.perf_counter() - t0
    say(f"tokenizer: byte-level BPE, {len(tokenizer)} tokens [{timings['tokenizer_s']:.1f} s]")

    # 3. model + SFT
    model = build_tiny_model(tiny_config(len(tokenizer), spec.hidden_size, spec.num_layers, spec.num_heads), seed)
    n_params = sum(p.numel() for p in model.parameters())
    cfg = replace(spec.sft, seed=seed, progress=progress)
    say(
        f"SFT: training a {n_params / 1e6:.2f} M-parameter GPT-NeoX ({spec.num_layers} layers, hidden "
        f"{spec.hidden_size}) for {cfg.epochs:g} epochs on {cfg.device} ..."
    )
    t0 = time.perf_counter()
    stats = train_sft(model, tokenizer, [r.text for r in train], cfg, eval_texts=[r.text for r in heldout])
    stats.pop("model")
    timings["sft_s"] = time.perf_counter() - t0
    say(
        f"SFT: {stats['steps']} steps, {stats['tokens'] / 1e3:.0f} k tokens in {timings['sft_s']:.0f} s; "
        f"held-out perplexity {stats['ppl_before']:.1f} -> {stats['ppl_after']:.2f}"
    )
    bars_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise here
    try:
        model.save_pretrained(out / "model")
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
    tokenizer.save_pretrained(out / "model")

    return {
        "version": DEMO_VERSION,
        "seed": seed,
        "spec": asdict(spec),
        "params": n_params,
        "vocab_size": len(tokenizer),
        "n_train_reviews": len(train),
        "n_heldout_reviews": len(heldout),
        "n_train_prompts": len(prompts),
        "sentiments": dict(counts),
        "timings": timings,
        "sft": {k: v for k, v in stats.items() if k != "losses"},
        "loss_curve": stats["losses"][:: max(1, len(stats["losses"]) // 50)],
    }


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[rlhflab demo] {msg}", file=sys.stderr, flush=True)


def ensure_demo_assets(
    home: Path | str | None = None,
    seed: int = 0,
    progress: bool = True,
    spec: DemoSpec | None = None,
    rebuild: bool = False,
) -> DemoAssets:
    """Return the demo assets for ``seed``, building them on first use (about 1.5 minutes on 2 CPU cores).

    ``home`` defaults to ``$RLHFLAB_HOME`` or ``~/.cache/rlhflab``. The build is deterministic for a seed on a
    given machine and atomic: it is written into a hidden scratch folder and renamed into place only when complete;
    an incomplete or damaged folder is never used. ``rebuild=True`` builds afresh and then replaces the cached
    build (which stays usable if the rebuild is interrupted).
    """
    spec = spec or DemoSpec()
    home = Path(home).expanduser() if home is not None else default_home()
    root = home / demo_dir_name(seed, spec)

    def build(out: Path) -> None:
        start = time.perf_counter()
        _say(progress, f"building the demo assets in {root} (first use only)")
        manifest = _build(out, seed, spec, progress)
        manifest["timings"]["total_s"] = time.perf_counter() - start
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        _say(progress, f"done in {manifest['timings']['total_s']:.0f} s")

    assets = _assets(build_once(root, build, lambda path: _assets(path) is not None, rebuild))
    assert assets is not None
    return assets
