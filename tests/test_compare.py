"""The comparison report from hand-made job dirs: rows, aggregates, failures, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from rlhf_exp.compare import build_report, load_jobs


def make_job(sweep: Path, overrides: list[str], metrics: dict | None, log: str = "") -> Path:
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        writer = SummaryWriter(str(job / "tensorboard"))
        for step in range(3):
            writer.add_scalar("objective/kl", metrics["eval/kl"] * step, step)
        writer.close()
    (job / "run.log").write_text(log)
    return job


def metrics(method: str, kl: float, gold: float) -> dict:
    return {
        "method": method,
        "eval/kl": kl,
        "eval/gold_reward": gold,
        "eval/gold_reward_ci_low": gold - 0.05,
        "eval/gold_reward_ci_high": gold + 0.05,
        "eval/bleu": 0.1,
        "eval/win_rate_gold": 0.6,
        "time/wall_s": 12.0,
    }


def test_report_lists_every_run_aggregates_seeds_and_marks_failures(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for seed, gold in ((0, 0.30), (1, 0.40)):
        make_job(
            sweep, ["method=dpo", "method.beta=0.1", f"seed={seed}"], metrics("dpo", 2.0, gold)
        )
    make_job(sweep, ["method=dpo", "method.beta=0.5", "seed=0"], metrics("dpo", 1.0, 0.2))
    make_job(sweep, ["method=ppo", "method.kl_coef=0.05", "seed=0"], metrics("ppo", 3.0, 0.5))
    make_job(
        sweep,
        ["method=ppo", "method.kl_coef=0.05", "seed=1"],
        None,
        log="[INFO] - step 3\nerror: method.kl_coef=nan is invalid: must be >= 0\n",
    )

    jobs = load_jobs(sweep)
    assert len(jobs) == 5 and sum(j.error is not None for j in jobs) == 1
    report = build_report(sweep).read_text()
    assert "5 runs, 1 failed" in report
    assert "**failed**: error: method.kl_coef=nan is invalid" in report
    assert "0.300 [0.250, 0.350]" in report  # per-run gold with its interval
    # aggregated over the two seeds of beta=0.1: mean 0.35, std 0.05
    assert "| dpo | beta=0.1 | 2 | 0.35 ± 0.05 |" in report
    assert "| ppo | kl_coef=0.05 | 1 |" in report
    for png in ("frontier.png", "curves.png", "bars.png"):
        assert (sweep / png).stat().st_size > 1000 and f"({png})" in report


def test_cli_rebuilds_report_and_rejects_empty_dir(tmp_path: Path):
    sweep = tmp_path / "sweep"
    make_job(sweep, ["method=dpo", "seed=0"], metrics("dpo", 1.0, 0.1))
    ok = subprocess.run(
        [sys.executable, "-m", "rlhf_exp.compare", str(sweep)], capture_output=True, text=True
    )
    assert ok.returncode == 0 and (sweep / "comparison.md").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "rlhf_exp.compare", str(tmp_path / "none")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("error: no Hydra job dirs")


@pytest.mark.slow
def test_quick_comparison_preset_is_a_real_sweep_with_a_full_report(tmp_path: Path):
    from tests.conftest import run_cli

    result = run_cli("-m", "experiment=ppo_vs_dpo_quick", f"paths.root_dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (tmp_path / "outputs" / "multiruns").glob("*/*")
    names = {p.name for p in sweep.iterdir() if p.is_dir()}
    expected = {
        f"arm={arm},seed={seed}" for arm in ("dpo_beta_0.1", "ppo_kl_0.05") for seed in (0, 1)
    }
    assert names == expected
    for name in expected:
        job = json.loads((sweep / name / "metrics.json").read_text())
        assert "status" not in job and job["eval/kl"] == job["eval/kl"]  # finished, not NaN
    report = (sweep / "comparison.md").read_text()
    assert "4 runs, 0 failed" in report
    assert all(f"| {name} |" in report for name in expected)
    assert "| dpo | beta=0.1 | 2 |" in report and "| ppo | kl_coef=0.05 | 2 |" in report
    for png in ("frontier.png", "curves.png", "bars.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
