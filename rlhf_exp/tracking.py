"""Where a run's numbers go: TensorBoard event files, `metrics.json`, and a one-screen summary.

Every run owns one `Tracker`. Trainer-backed methods hand its writer to transformers'
`TensorBoardCallback`, so the trainer's own logs (`train/loss`, `eval/accuracy`, ...) and ours
land in the same event files under `<run_dir>/tensorboard`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from rlhf_exp.artifacts import atomic_write_text
from rlhf_exp.memory import PeakMemory

log = logging.getLogger(__name__)


class Tracker:
    """`writes=False` (processes other than rank 0) keeps everything in memory."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, writes: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.writes = writes
        self.tb_dir = self.run_dir / "tensorboard"
        self.started = time.perf_counter()
        self.memory = PeakMemory().start()
        self._writer = None
        if tensorboard and writes:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir))

    @property
    def writer(self) -> Any:
        """The `SummaryWriter` (None when TensorBoard is off)."""
        return self._writer

    def trainer_callbacks(self) -> list[Any]:
        """Callbacks that route a transformers/TRL trainer's logs into this run's writer."""
        if self._writer is None:
            return []
        from transformers.integrations import TensorBoardCallback

        return [TensorBoardCallback(tb_writer=self._writer)]

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        if self._writer is None:
            return
        for tag, value in metrics.items():
            if _is_number(value):
                self._writer.add_scalar(tag, value, step)

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(
        self, metrics: dict[str, Any], step: int, hparams: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Log final metrics (and `hparams` for TensorBoard's HParams dashboard), write
        `metrics.json` atomically, close the writer."""
        metrics = {
            **metrics,
            "time/wall_s": round(self.elapsed(), 2),
            "memory/peak_rss_mb": round(self.memory.stop(), 1),
        }
        self.log_scalars({k: v for k, v in metrics.items() if "/" in k}, step)
        if hparams and self._writer is not None:
            numeric = {k: v for k, v in metrics.items() if _is_number(v) and "/" in k}
            # run_name="." keeps the hparams in this run's dir instead of a timestamped child
            self._writer.add_hparams(
                hparams, {f"hparam/{k}": v for k, v in numeric.items()}, run_name="."
            )
        if self.writes:
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        self.close()
        return metrics

    def close(self) -> None:
        self.memory.stop()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def summary_table(title: str, metrics: dict[str, Any]) -> str:
    """A plain-text two-column table of `metrics`, for the end of a run.

    The data report (`data/*`) is left out: it was logged split by split when the data was
    prepared, and stays in metrics.json; the rows trained and scored on show as
    `train/pairs`, `train/rows` and `eval/pairs`.
    """
    rows = [
        (k, _fmt(v))
        for k, v in metrics.items()
        if not isinstance(v, (dict, list)) and not k.startswith("data/")
    ]
    width = max([len(k) for k, _ in rows] + [len(title)])
    value_width = max([len(v) for _, v in rows] + [5])
    rule = "-" * (width + value_width + 3)
    lines = [rule, title, rule, *(f"{k:<{width}}   {v:>{value_width}}" for k, v in rows), rule]
    return "\n".join(lines)
