"""The one rule for directories the commands write into (``train``/``demo``, ``sft``, ``compare``).

A missing or empty directory is used. A directory that already holds this command's own output is reused,
resumed or, with ``--overwrite``, replaced, as the command documents. Anything else that is not empty (a user's
own files) is refused, ``--overwrite`` or not: rlhflab never writes into, nor deletes, what it did not write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import yaml

from rlhflab.config import Config
from rlhflab.errors import UserError


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds an rlhflab run: a config.yaml that is a mapping of rlhflab config sections only (a
    project's own config.yaml is not one)."""
    try:
        data = yaml.safe_load((Path(path) / "config.yaml").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and set(data) <= {f.name for f in fields(Config)}


def check_output_dir(
    path: Path, is_ours: Callable[[Path], bool], what: str, overwrite: bool | None, option: str = "--output-dir"
) -> Path:
    """Refuse ``path`` unless it is missing, empty, or holds ``what`` ("a run"; ``is_ours`` tells).

    ``overwrite`` None: the command reuses its own output (it has no --overwrite option); False: its own output is
    refused too; True: its own output is allowed (the caller then replaces it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{option}: {path} is a file, not a directory")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not is_ours(path):
        raise UserError(
            f"{option}: {path} is not empty and does not hold {what} written by rlhflab; choose a new or empty "
            "directory (rlhflab never writes into, nor deletes, other files)"
        )
    if overwrite is False:
        raise UserError(f"{option}: {path} already holds {what}; pass --overwrite to replace it")
    return path
