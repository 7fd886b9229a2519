"""Timing hooks: what the training loop tells an observer (``rlhflab bench``'s meter) while it runs.

Hooks only watch: they time phases and see the models, and never change what the loop computes. The default,
:data:`NO_HOOKS`, does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class LoopHooks:
    """Called by :func:`rlhflab.train.train`. Phases: ``generate``, ``reward``, ``logprobs`` (the scoring pass, with
    ``ref_logprobs`` and ``values`` inside it) and ``update``; a phase inside another times only itself."""

    def roles_ready(self, roles) -> None:
        """The policy, critic and reference are built (:class:`rlhflab.models.roles.Roles`), before the first step."""

    def step_started(self, step: int) -> None:
        """Step ``step`` begins (before its ``generate`` phase)."""

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        yield


NO_HOOKS = LoopHooks()
