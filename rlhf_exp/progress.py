"""Where a sweep stands, one line per job start: job k of N, elapsed, and the time left.

A Hydra callback: `on_multirun_start` (in the sweeping process) writes the sweep's start and
size to the sweep dir, and `on_job_start` (in whichever process runs the job: the same one,
a joblib worker, a SLURM node) reads it back. The time left is the finished jobs' throughput
applied to the rest, so it holds for parallel launchers too.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

STATE_FILE = ".sweep_progress.json"


def sweep_size(config: DictConfig) -> int | None:
    """How many jobs the sweep of `config` runs: the basic sweeper's grid, an Optuna
    search's trials; None for a sweeper whose size is not known up front."""
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if "optuna" in target.lower():
        return int(sweeper.n_trials)
    if not target.endswith("BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))


def duration(seconds: float) -> str:
    """`2 h 5 min`, `3 min 20 s`, `45 s`."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    if s >= 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s} s"


def progress_line(number: int, total: int | None, elapsed: float, finished: int) -> str:
    """`sweep: job 5 of 63; 4 finished in 12 min 3 s; about 2 h 1 min left`."""
    line = f"sweep: job {number}" + (f" of {total}" if total else "")
    line += f"; {finished} finished in {duration(elapsed)}"
    if total and finished:
        left = elapsed / finished * (total - finished)
        line += f"; about {duration(left)} left"
    return line


def finished_jobs(sweep_dir: Path, since: float) -> int:
    """Jobs of this sweep dir whose metrics.json was written since `since` (this sweep)."""
    return sum(
        1
        for metrics in sweep_dir.glob("*/metrics.json")
        if metrics.stat().st_mtime >= since and '"status"' not in metrics.read_text()
    )


class SweepProgress(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        try:
            total = sweep_size(config)
        except Exception:  # a sweep Hydra accepts but we cannot count: progress without N
            log.debug("could not count the sweep's jobs", exc_info=True)
            total = None
        state = {"start": time.time(), "total": total}
        (sweep_dir / STATE_FILE).write_text(json.dumps(state))
        log.info("sweep: %s jobs in %s", total if total else "an unknown number of", sweep_dir)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            state = json.loads((sweep_dir / STATE_FILE).read_text())
        except (OSError, ValueError):  # a launcher that skipped on_multirun_start
            return
        elapsed = time.time() - state["start"]
        number = int(config.hydra.job.num) + 1
        done = finished_jobs(sweep_dir, state["start"])
        log.info(
            "%s (%s)",
            progress_line(number, state["total"], elapsed, done),
            config.hydra.job.override_dirname,
        )
