"""Which process writes: under `accelerate launch` / `torchrun` every process runs the same
run, and only rank 0 writes the run's files (config, metrics, TensorBoard, final model)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0 of a launched process group, or a plain single process (no RANK set)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes in the launched group (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))
