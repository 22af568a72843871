"""`run.py` as a user drives it: help, printed config, one-line errors with exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, run_cli


def test_help_lists_groups_and_options():
    result = run_cli("--help")
    assert result.returncode == 0
    for line in [
        "method: best_of_n, dpo, eval, grpo, kto, online_dpo, ppo, reward, rloo, sft",
        "lora: default, none",
        "debug: fast",
        "dataset: files",
        "bon_n_16, bon_n_4, bon_n_64, dpo_beta_0.05, dpo_beta_0.1",  # arm: ...
    ]:
        assert line in result.stdout


def test_cfg_job_prints_composed_config():
    result = run_cli("--cfg", "job", "method=sft", "lora=default")
    assert result.returncode == 0
    assert "name: sft" in result.stdout and "enabled: true" in result.stdout


def test_unknown_method_lists_valid_names(tmp_path: Path):
    result = run_cli(f"paths.root_dir={tmp_path}", "method=ppx")
    assert result.returncode != 0
    assert "ppx" in result.stderr and "reward" in result.stderr and "sft" in result.stderr


@pytest.mark.slow
def test_multirun_sweep_runs_each_method_in_a_named_dir(tmp_path: Path):
    result = run_cli("-m", "method=sft,reward", "debug=fast", f"paths.root_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    jobs = {
        p.name: json.loads((p / "metrics.json").read_text())
        for p in sweep.iterdir()
        if (p / "metrics.json").exists()
    }
    assert set(jobs) == {"method=sft", "method=reward"}
    assert jobs["method=sft"]["eval/loss"] < jobs["method=sft"]["eval/loss_initial"]
    assert jobs["method=reward"]["eval/accuracy"] > 0.7
    # the reward job reused the policy the sft job stored instead of training its own
    report = (sweep / "comparison.md").read_text()  # written by the multirun callback
    assert "2 runs, 0 failed" in report and "| method=sft |" in report
    stores = [ln for ln in result.stdout.splitlines() if "cache: stored" in ln]
    assert sum("/cache/sft/" in ln for ln in stores) == 1, stores


def test_missing_columns_name_found_and_expected(tmp_path: Path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"question": "Is it good?", "answer": "Yes."}\n' * 3)
    result = run_cli(
        f"paths.root_dir={tmp_path}",
        "method=sft",
        "dataset=files",
        f"+dataset.data_files.preference={pairs}",
    )
    assert result.returncode == 2
    # progress bars of the loading that ran before the error also go to stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert (
        result.stderr.strip().endswith(line) and "[question, answer]" in line and "chosen" in line
    )
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_failing_sweep_job_is_recorded_and_the_others_finish(tmp_path: Path):
    result = run_cli(
        "-m",
        "hydra/launcher=joblib",  # two jobs in parallel worker processes
        "hydra.launcher.n_jobs=2",
        "method=sft",
        "debug=fast",
        "method.max_steps=3",
        "method.learning_rate=-1,0.001",
        f"paths.root_dir={tmp_path}",
    )
    # the sweep goes on past the failed job, and its exit code says one failed
    assert result.returncode == 1, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    assert result.stderr.strip().splitlines()[-2:] == [
        f"1 of 2 jobs failed (see {sweep / 'comparison.md'}):",
        "  method.learning_rate=-1,method.max_steps=3,method=sft: error: "
        "method.learning_rate=-1.0 is invalid: must be > 0",
    ]
    bad = json.loads(
        (
            sweep / "method.learning_rate=-1,method.max_steps=3,method=sft" / "metrics.json"
        ).read_text()
    )
    good = json.loads(
        (
            sweep / "method.learning_rate=0.001,method.max_steps=3,method=sft" / "metrics.json"
        ).read_text()
    )
    assert bad["status"] == "failed"
    assert bad["error"] == "error: method.learning_rate=-1.0 is invalid: must be > 0"
    assert good["train/global_step"] == 3 and "status" not in good
    report = (sweep / "comparison.md").read_text()
    assert "2 runs, 1 failed" in report and "**failed**: error: method.learning_rate" in report


@pytest.mark.slow
def test_rerun_sweep_skips_finished_jobs_and_resumes_the_others(tmp_path: Path):
    sweep = tmp_path / "sweep"
    args = (
        "-m",
        "method=sft",
        "debug=fast",
        "method.max_steps=4",
        "method.save_steps=2",
        "seed=0,1",
        f"paths.root_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr[-2000:]
    (done,) = sweep.glob("*seed=0")  # job dirs are named by their overrides
    (cut,) = sweep.glob("*seed=1")
    finished_at = (done / "metrics.json").stat().st_mtime_ns
    # job seed=1 "was killed" after its step-2 checkpoint: no metrics, no later checkpoint
    (cut / "metrics.json").unlink()
    for late in cut.glob("checkpoints/checkpoint-4"):
        shutil.rmtree(late)

    again = run_cli(*args)
    assert again.returncode == 0, again.stderr[-2000:]
    log = again.stdout + again.stderr
    assert f"{done}: finished before with this config; skipped" in log
    assert f"{cut}: interrupted before; resuming from its latest checkpoint" in log
    assert (done / "metrics.json").stat().st_mtime_ns == finished_at
    resumed = json.loads((cut / "metrics.json").read_text())
    assert resumed["train/global_step"] == 4 and "status" not in resumed


@pytest.mark.slow
def test_slurm_preset_runs_a_sweep_through_submitit_locally(tmp_path: Path, shared_cache):
    """The SLURM preset's resources on submitit's local executor (no cluster here; what only
    sbatch takes, e.g. signal_delay_s, the local executor refuses): the jobs run as submitit
    jobs in their own processes and the sweep reports them."""
    preset = yaml.safe_load((ROOT / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text())
    assert preset["defaults"] == ["submitit_slurm"] and preset["gpus_per_node"] == 1
    generic = ("timeout_min", "cpus_per_task", "tasks_per_node", "mem_gb")
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "hydra/launcher=submitit_local",
        *(f"hydra.launcher.{key}={preset[key]}" for key in generic),
        "method=sft",
        "debug=fast",
        "method.max_steps=2",
        "seed=0,1",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        job = sweep / f"method.max_steps=2,method=sft,seed={seed}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["train/global_step"] == 2 and "status" not in metrics
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # submitit ran them
    assert "2 runs" in (sweep / "comparison.md").read_text()


def test_slurm_preset_composes_for_a_cluster():
    result = run_cli("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "--cfg", "hydra")
    assert result.returncode == 0, result.stderr[-2000:]
    launcher = yaml.safe_load(result.stdout)["hydra"]["launcher"]
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "gpu" and launcher["gpus_per_node"] == 1
    assert launcher["signal_delay_s"] == 120  # SIGUSR2 before the time limit's SIGTERM
