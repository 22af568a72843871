"""Interrupt and resume for trainer-backed methods, through the real CLI in subprocesses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf_exp.training import CHECKPOINT_COMPLETE, latest_checkpoint
from tests.conftest import ROOT, run_cli

ARGS = [
    "method=sft",
    "debug=fast",
    "method.max_steps=24",
    "method.save_steps=4",
    "method.eval_steps=100",
]


def test_latest_checkpoint_ignores_incomplete_ones(tmp_path: Path):
    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).write_text(str(step))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert latest_checkpoint(tmp_path / "none") is None


def _kill_after_first_checkpoint(root: Path, run_dir: Path, sig: int) -> tuple[int, str]:
    """(exit code, stderr) of a run sent `sig` once its first checkpoint is complete."""
    cmd = [
        sys.executable,
        str(ROOT / "run.py"),
        *ARGS,
        f"paths.root_dir={root}",
        f"hydra.run.dir={run_dir}",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while latest_checkpoint(run_dir / "checkpoints") is None:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_killed_run_resumes_to_the_same_result(tmp_path: Path, sig: int):
    straight = run_cli(*ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    run_dir = tmp_path / "killed"
    code, stderr = _kill_after_first_checkpoint(tmp_path, run_dir, sig)
    if sig == signal.SIGTERM:  # clean stop: a checkpoint, exit 130, and how to resume
        assert code == 130
        assert "resume with: python run.py" in stderr and "resume_from=latest" in stderr
        assert json.loads((run_dir / "metrics.json").read_text())["status"] == "failed"
    else:
        assert code == -signal.SIGKILL
    stopped_at = int(latest_checkpoint(run_dir / "checkpoints").name.split("-")[1])
    assert stopped_at < 24

    resumed = run_cli(
        *ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", "resume_from=latest"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {run_dir}/checkpoints/checkpoint-{stopped_at}" in resumed.stdout
    got = json.loads((run_dir / "metrics.json").read_text())
    assert got["train/global_step"] == expected["train/global_step"] == 24
    # same data order, weights, optimiser and RNG: the held-out loss matches to float noise
    assert got["eval/loss"] == pytest.approx(expected["eval/loss"], rel=1e-4)
    assert got["eval/loss_initial"] == expected["eval/loss_initial"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path):
    result = run_cli(
        *ARGS, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/new", "resume_from=latest"
    )
    assert result.returncode == 2
    assert (
        f"error: resume_from='latest': no complete checkpoint at {tmp_path}/new/checkpoints"
        in result.stderr
    )
