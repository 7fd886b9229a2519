"""Metric sinks behind one small protocol: JSONL (always), a console progress bar, W&B and TensorBoard.

Besides scalars, every ``tracking.samples_every`` steps a sample table (step, prompt, completion, score) goes to
each sink that can show one: samples.jsonl, a W&B Table, TensorBoard text.
"""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from rlhflab.config import Config, to_dict

SAMPLE_COLUMNS = ("step", "prompt", "completion", "score")


class Sink(Protocol):
    def log(self, metrics: dict[str, float]) -> None: ...
    def close(self) -> None: ...


def markdown_table(rows: list[dict]) -> str:
    """Rows as a Markdown table (TensorBoard's text tab renders Markdown); pipes and newlines escaped."""

    def cell(value) -> str:
        text = f"{value:+.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(SAMPLE_COLUMNS) + " |", "|" + "---|" * len(SAMPLE_COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in SAMPLE_COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


class JsonlSink:
    """One JSON object per optimisation step, flushed at once so a crash loses nothing already logged."""

    def __init__(self, path: Path):
        self.file = path.open("a")

    def log(self, metrics: dict[str, float]) -> None:
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}
        self.file.write(json.dumps(clean) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class SamplesJsonlSink:
    """samples.jsonl: one JSON object per sampled row (step, prompt, completion, score)."""

    def __init__(self, path: Path):
        self.file = path.open("a")

    def log(self, metrics: dict[str, float]) -> None:
        pass

    def log_samples(self, step: int, rows: list[dict]) -> None:
        for row in rows:
            self.file.write(json.dumps({c: row[c] for c in SAMPLE_COLUMNS}) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class ProgressSink:
    """tqdm bar over the steps with the numbers a user watches: score, KL, policy loss."""

    def __init__(self, total: int, initial: int = 0, enabled: bool = True):
        self.bar = tqdm(total=total, initial=initial, desc="rlhf", unit="step", disable=not enabled, dynamic_ncols=True)

    def log(self, metrics: dict[str, float]) -> None:
        self.bar.set_postfix(
            score=f"{metrics['objective/scores']:+.3f}",
            kl=f"{metrics['objective/kl']:.3f}",
            len=f"{metrics['gen/length']:.1f}",
            refresh=False,
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


class WandbSink:
    """One W&B run per run directory: its id is kept in ``wandb-run-id``, so ``--resume`` logs into the same W&B
    run. The steps between the newest checkpoint and a kill are logged twice; W&B keeps the first values, which
    an exact resume repeats (timings aside)."""

    ID_FILE = "wandb-run-id"

    def __init__(self, cfg: Config, run_dir: Path):
        import wandb  # optional dependency: pip install 'rlhflab[tracking]'

        id_file = run_dir / self.ID_FILE
        # secrets, not the seeded RNGs: a resume stays exact
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        id_file.write_text(run_id + "\n")
        self.run = wandb.init(
            project=cfg.tracking.project,
            name=cfg.tracking.run_name or run_dir.name,
            config=to_dict(cfg),
            dir=str(run_dir),
            id=run_id,
            resume="allow",
        )

    def log(self, metrics: dict[str, float]) -> None:
        self.run.log({k: v for k, v in metrics.items() if k != "step"}, step=int(metrics["step"]))

    def log_samples(self, step: int, rows: list[dict]) -> None:
        import wandb

        table = wandb.Table(columns=list(SAMPLE_COLUMNS), data=[[row[c] for c in SAMPLE_COLUMNS] for row in rows])
        self.run.log({"samples": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class TensorBoardSink:
    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, int(metrics["step"]))
        self.writer.flush()

    def log_samples(self, step: int, rows: list[dict]) -> None:
        self.writer.add_text("samples", markdown_table(rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Trackers:
    """Fan one metrics dict out to every configured sink."""

    def __init__(self, cfg: Config, run_dir: Path, total_steps: int, start_step: int = 0, main_process: bool = True):
        self.sinks: list[Sink] = []
        if not main_process:
            return
        self.sinks.append(JsonlSink(run_dir / "metrics.jsonl"))
        self.sinks.append(SamplesJsonlSink(run_dir / "samples.jsonl"))
        self.sinks.append(ProgressSink(total_steps, start_step, cfg.tracking.progress))
        if cfg.tracking.wandb:
            self.sinks.append(WandbSink(cfg, run_dir))
        if cfg.tracking.tensorboard:
            self.sinks.append(TensorBoardSink(run_dir))

    def log(self, metrics: dict[str, float]) -> None:
        for sink in self.sinks:
            sink.log(metrics)

    def log_samples(self, step: int, rows: list[dict]) -> None:
        """A table of sampled rows (dicts with the SAMPLE_COLUMNS keys) to every sink that shows tables."""
        for sink in self.sinks:
            if hasattr(sink, "log_samples"):
                sink.log_samples(step, rows)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
