"""Folders under ``$RLHFLAB_HOME`` that are built once and then reused: the demo data, the demo model, SmolLM2.

A build writes into a hidden scratch sibling (``.NAME.tmp-PID-RANDOM``) that is renamed into place only when
complete, so an interrupted build is never trusted; a complete folder is recognised by its own check.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path


def default_home() -> Path:
    """``$RLHFLAB_HOME`` or ``~/.cache/rlhflab``."""
    return Path(os.environ.get("RLHFLAB_HOME") or "~/.cache/rlhflab").expanduser()


def build_once(
    root: Path, build: Callable[[Path], None], complete: Callable[[Path], bool], rebuild: bool = False
) -> Path:
    """``root`` once ``complete(root)``; else ``build(scratch)`` fills an empty scratch folder, renamed to ``root``.

    With ``rebuild`` the folder is built afresh and replaces the old one only when done (which stays usable if the
    rebuild is interrupted). When another process finishes the same build first, theirs is kept."""
    if not rebuild and complete(root):
        return root
    home, name = root.parent, root.name
    home.mkdir(parents=True, exist_ok=True)
    _remove_stale_scratch(home, name)
    tmp, old = _scratch(home, name, "tmp"), _scratch(home, name, "old")
    tmp.mkdir()
    try:
        build(tmp)
        if root.exists():  # incomplete, damaged, another version, or rebuild: set aside, deleted below
            root.rename(old)
        try:
            tmp.rename(root)
        except OSError:  # another process finished the same build in between: keep theirs
            if not complete(root):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    assert complete(root), f"the build in {root} is incomplete"
    return root


def _scratch(home: Path, name: str, kind: str) -> Path:
    """A hidden sibling folder name, ``.demo-v1-seed0.tmp-PID-RANDOM``, that is never mistaken for a build."""
    return home / f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _remove_stale_scratch(home: Path, name: str) -> None:
    """Delete scratch folders of earlier builds whose process is gone (killed before it could clean up)."""
    for path in home.glob(f".{name}.*-*-*"):
        try:
            os.kill(int(path.name.rsplit("-", 2)[-2]), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (ValueError, PermissionError):
            continue
