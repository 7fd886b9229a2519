"""The worker process of ``rlhflab bench``: one layout's run of the real training loop, measured.

``python -m rlhflab.bench_worker CONFIG RESULT`` runs :func:`rlhflab.train.train` on CONFIG with a :class:`Meter` as
its timing hooks and writes what it measured to RESULT (JSON). The meter only *observes* the loop: it times the
loop's phases and puts forward hooks on the models to count passes and FLOPs (see :mod:`rlhflab.bench`); it never
trains differently from ``rlhflab train``.
"""

from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

from rlhflab.errors import UserError
from rlhflab.hooks import LoopHooks
from rlhflab.models.forward import register_head_hook


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Meter(LoopHooks):
    """Seconds, forward passes and FLOPs per phase and per step: the loop's timing hooks, forward hooks on the models
    and a head hook (:func:`rlhflab.models.forward.register_head_hook`) fill it."""

    def __init__(self, device: torch.device):
        self.device = device
        self.steps: list[dict] = []
        self.stack: list[str] = []
        self.mark = time.perf_counter()
        self.hooked: set[int] = set()
        self.peak = 0  # the peak RSS when the last phase ended

    @property
    def current(self) -> dict:
        return self.steps[-1]

    def new_step(self) -> None:
        self.steps.append(
            {
                "seconds": defaultdict(float),
                "forward_calls": defaultdict(int),
                "rows": defaultdict(int),
                "tokens": defaultdict(int),
                "flops": defaultdict(float),
                "rss_growth": defaultdict(int),
            }
        )

    def _switch(self) -> None:
        sync(self.device)
        now = time.perf_counter()
        if self.steps:
            if self.stack:
                self.current["seconds"][self.stack[-1]] += now - self.mark
            # which phase raised the process's peak memory (before the first phase: loading)
            peak = peak_rss_bytes()
            self.current["rss_growth"][self.phase_name] += peak - self.peak
            self.peak = peak
        self.mark = now

    # the loop's hooks ------------------------------------------------------------------------------------------
    def roles_ready(self, roles) -> None:
        for model in roles.models():
            self.instrument(model)

    def step_started(self, step: int) -> None:
        self.new_step()

    @contextlib.contextmanager
    def phase(self, name: str):
        self._switch()
        self.stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self.stack.pop()
            if name == "update" and self.steps:  # the step's peak: after its update, before the final save
                self.current["peak_rss_bytes"] = peak_rss_bytes()

    @property
    def phase_name(self) -> str:
        return self.stack[-1] if self.stack else "other"

    # forward hooks ------------------------------------------------------------------------------------------------
    def instrument(self, model: torch.nn.Module) -> None:
        """Count backbone passes (and their attention FLOPs) and every Linear's FLOPs in ``model``."""
        from transformers import PreTrainedModel

        for module in model.modules():
            if id(module) in self.hooked:
                continue
            if isinstance(module, PreTrainedModel) and module.base_model is module:  # e.g. GPTNeoXModel
                self.hooked.add(id(module))
                module.register_forward_pre_hook(self._backbone_hook, with_kwargs=True)
            elif isinstance(module, torch.nn.Linear):
                self.hooked.add(id(module))
                module.register_forward_hook(self._linear_hook)

    def _backbone_hook(self, module, args, kwargs) -> None:
        if not self.steps:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows, length = ids.shape
        mask = kwargs.get("attention_mask")
        context = mask.shape[1] if mask is not None else length
        cfg = module.config
        attention = 4.0 * cfg.num_hidden_layers * cfg.hidden_size * rows * length * context
        step, phase = self.current, self.phase_name
        step["forward_calls"][phase] += 1
        step["rows"][phase] += rows
        step["tokens"][phase] += rows * length
        step["flops"][phase] += attention * (3.0 if torch.is_grad_enabled() else 1.0)

    def _linear_hook(self, module, inputs, output) -> None:
        if not self.steps:
            return
        x = inputs[0]
        per_pass = 2.0 * (x.numel() // module.in_features) * module.in_features * module.out_features
        passes = 1.0
        if torch.is_grad_enabled() and output.requires_grad:
            passes += float(x.requires_grad) + float(module.weight.requires_grad)
        self.current["flops"][self.phase_name] += per_pass * passes

    def count_head(self, hidden: torch.Tensor, weight: torch.Tensor) -> None:
        """The LM head's products in the hidden-state log-probs (no Linear hook sees them: the head's weight is
        multiplied without calling it): the logits, and with gradients the Jacobian's product, the share of the
        backward that the logits path's head runs. A :func:`rlhflab.models.forward.register_head_hook`."""
        if self.steps:
            passes = 2.0 if torch.is_grad_enabled() and hidden.requires_grad else 1.0
            tokens = hidden.numel() // weight.shape[1]
            self.current["flops"][self.phase_name] += passes * 2.0 * tokens * weight.numel()


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def worker(config_file: Path, result_file: Path) -> None:
    """Run ``rlhflab train`` on one config inside this (fresh) process and write what was measured."""
    from rlhflab.config import load_config
    from rlhflab.models.loading import resolve_device
    from rlhflab.train import train

    cfg = load_config(config_file)
    device = resolve_device(cfg.model.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    meter = Meter(device)
    register_head_hook(meter.count_head)
    run_dir = train(cfg, overwrite=True, hooks=meter)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    steps = []
    for measured, logged in zip(meter.steps, metrics):
        steps.append(
            {
                "step_seconds": logged["time/step"],
                "seconds": dict(measured["seconds"]),
                "forward_calls": dict(measured["forward_calls"]),
                "rows": dict(measured["rows"]),
                "tokens": dict(measured["tokens"]),
                "flops": dict(measured["flops"]),
                "rss_growth": dict(measured["rss_growth"]),
                "response_tokens": logged["gen/length"] * cfg.rollout.batch_size,
                "mean_length": logged["gen/length"],
                "peak_rss_bytes": measured.get("peak_rss_bytes"),
            }
        )
    result = {
        "roles": cfg.model.roles,
        "peak_rss_bytes": max(s["peak_rss_bytes"] or 0 for s in steps),
        "peak_rss_bytes_process": peak_rss_bytes(),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "device": str(device),
        "steps": steps,
    }
    result_file.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":  # python -m rlhflab.bench_worker CONFIG RESULT
    import warnings

    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    try:
        worker(Path(sys.argv[1]), Path(sys.argv[2]))
    except UserError as err:  # one line, as the CLI prints it, not a traceback
        sys.exit(f"rlhflab bench: error: {err}")
