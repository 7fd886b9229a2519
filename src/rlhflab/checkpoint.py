"""Atomic checkpoints that resume exactly: ``checkpoints/step-NNNNNN/`` holds the adapters and value head
(safetensors) and ``trainer_state.pt`` (optimizer, scheduler, KL controller, RNG states, data position, step),
loaded with ``torch.load(weights_only=True)``. Never the frozen base weights.

A checkpoint is written to ``.tmp-step-NNNNNN`` and renamed when complete, so a run killed mid-write leaves only
a temp folder, which is ignored (and cleaned up by the next save).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    """Python, NumPy and torch global RNG states in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, roles, trainer_state: dict, keep: int) -> Path:
    """Write ``checkpoints/step-{step:06d}`` atomically and keep only the newest ``keep`` checkpoints."""
    root = run_dir / "checkpoints"
    final, tmp = root / f"step-{step:06d}", root / f".tmp-step-{step:06d}"
    for stale in root.glob(".tmp-step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    roles.save(tmp)
    torch.save({**trainer_state, "rng": rng_state(), "step": step}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)  # the moment the checkpoint becomes visible, it is complete
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    complete = [p for p in sorted((run_dir / "checkpoints").glob("step-*")) if (p / STATE_FILE).is_file()]
    return complete[-1] if complete else None


def load_checkpoint(path: Path, roles) -> dict:
    """Load adapters + value head into ``roles``, restore the RNGs, and return the trainer state."""
    roles.load(path)
    state = torch.load(path / STATE_FILE, weights_only=True)
    set_rng_state(state["rng"])
    return state


def restore_latest(run_dir: Path, roles, stateful: dict) -> tuple[Path, dict]:
    """Load the newest complete checkpoint into ``roles`` and each of ``stateful``'s objects (``load_state_dict``);
    returns its path and the whole saved state. No checkpoint is a UserError for ``--resume``."""
    from rlhflab.errors import UserError

    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"--resume: {run_dir} has no complete checkpoint to resume from")
    state = load_checkpoint(path, roles)
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    return path, state


def truncate_log(path: Path, step: int) -> None:
    """Keep the lines of a JSONL log up to ``step`` (a resumed run redoes the steps after its checkpoint)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))
