"""Sweep progress: how many jobs, how far, how long left."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from omegaconf import OmegaConf

from rlhf_exp.progress import duration, finished_jobs, progress_line, sweep_size

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def test_the_grid_counts_the_experiment_params_and_the_command_line_sweeps():
    config = OmegaConf.create(
        {
            "hydra": {
                "sweeper": {"_target_": BASIC, "params": {"arm": "a,b,c", "seed": "0,1"}},
                "overrides": {"task": ["method.learning_rate=1e-3,1e-4", "debug=fast"]},
            }
        }
    )
    assert sweep_size(config) == 12
    # a command-line value replaces the preset's sweep of the same key
    config.hydra.overrides.task = ["seed=0"]
    assert sweep_size(config) == 3


def test_an_optuna_search_is_its_trials_and_an_unknown_sweeper_is_unknown():
    optuna = {"_target_": "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"}
    config = OmegaConf.create({"hydra": {"sweeper": {**optuna, "n_trials": 7}}})
    assert sweep_size(config) == 7
    assert sweep_size(OmegaConf.create({"hydra": {"sweeper": {"_target_": "x.Y"}}})) is None


def test_time_left_is_the_finished_jobs_throughput_applied_to_the_rest():
    assert progress_line(5, 63, 600.0, 4) == (
        "sweep: job 5 of 63; 4 finished in 10 min 0 s; about 2 h 27 min left"
    )
    assert progress_line(1, 63, 3.0, 0) == "sweep: job 1 of 63; 0 finished in 3 s"
    assert progress_line(2, None, 65.0, 1) == "sweep: job 2; 1 finished in 1 min 5 s"
    assert duration(7260) == "2 h 1 min"


def test_finished_counts_only_this_sweeps_successful_jobs(tmp_path: Path):
    start = time.time()
    for name, metrics in [("a", {"x/y": 1}), ("b", {"status": "failed"}), ("old", {"x/y": 1})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(metrics))
    os.utime(tmp_path / "old" / "metrics.json", (start - 100, start - 100))  # a previous sweep's
    assert finished_jobs(tmp_path, since=start - 1) == 1
