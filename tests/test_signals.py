"""SIGINT/SIGTERM in every phase of a run (rlhf_exp/signals.py): the handler's contract in
process, then the real command line.

A stopped run records `status: interrupted` in `metrics.json`, prints one line and a resume
command that works (run here as printed), exits 130 (SIGINT) / 143 (SIGTERM), without a
traceback; a stopped sweep starts no further job, writes its report, and continues when run
again in the same sweep dir.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rlhf_exp import signals
from rlhf_exp.compare import RUNNING_MARKER, build_report, load_jobs
from tests.cli_fork import start_cli
from tests.conftest import ROOT, run_cli

# Small everything: the data (its generation and tokenising), the steps, the evaluation.
SMALL = [
    "debug=fast",
    "dataset.n_sft=400",
    "dataset.n_pairs=300",
    "dataset.n_eval_prompts=8",
    "eval.greedy=false",
    "eval.max_new_tokens=8",
]
# Job 1 of the sweep below is also the SFT stage the DPO run needs (same config, seed 0).
SFT = [
    "method.max_steps=3",
    "method.save_steps=1",
    "method.eval_steps=100",
    "method.max_eval_samples=16",
]
SFT_STAGE = [f"++upstream.sft.overrides.{o.removeprefix('method.')}" for o in SFT]


# ------------------------------------------------------------------------- the handler
def test_training_defers_the_first_signal_other_phases_stop_at_once():
    with signals.handling() as guard, signals.phase("training", deferred=True):
        signal.raise_signal(signal.SIGTERM)  # recorded: the step goes on
        assert signals.stop_requested() and guard.phase == "training"
        with pytest.raises(signals.Stop) as second:  # the user means it
            signal.raise_signal(signal.SIGINT)
        assert second.value.forced
    assert not signals.stop_requested()  # reset when the run's handler is removed

    with signals.handling(), pytest.raises(signals.Stop) as stop, signals.phase("precompute"):
        signal.raise_signal(signal.SIGINT)
        pytest.fail("not stopped at once")
    assert (stop.value.signum, stop.value.phase) == (signal.SIGINT, "precompute")
    assert signals.exit_code(signal.SIGINT) == 130 and signals.exit_code(signal.SIGTERM) == 143


def test_a_save_finishes_before_the_stop_and_a_pending_signal_stops_the_next_phase():
    saved = []
    with (
        signals.handling(),
        pytest.raises(signals.Stop) as stop,
        signals.phase("evaluation"),
        signals.phase("saving", deferred=True),
    ):
        signal.raise_signal(signal.SIGTERM)
        saved.append("all of it")
    assert saved == ["all of it"] and stop.value.phase == "saving"

    with signals.handling(), pytest.raises(signals.Stop) as stop:  # between two sweep jobs
        signal.raise_signal(signal.SIGINT)  # no phase yet: recorded
        with signals.phase("setup"):
            pytest.fail("the next phase started")
    assert stop.value.phase == "idle"


def test_a_stop_that_python_swallowed_is_raised_again_without_its_traceback(capfd):
    class Swallows:  # as logging's at-fork hook does when datasets.map starts its workers
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGTERM)  # Stop raised here: "Exception ignored"

    with signals.handling(), pytest.raises(signals.Stop) as stop, signals.phase("setup"):
        Swallows()
        for _ in range(100):
            time.sleep(0.01)
        pytest.fail("the stop was lost")
    assert (stop.value.signum, stop.value.phase) == (signal.SIGTERM, "setup")
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_further_signal_while_the_stop_is_reported_exits_at_once():
    code = (
        "import signal, time\n"
        "from rlhf_exp import signals\n"
        "with signals.handling() as guard:\n"
        "    guard.exiting()\n"
        "    signal.raise_signal(signal.SIGTERM)\n"
        "    time.sleep(5)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 143 and done.stderr == ""


# ------------------------------------------------------------------ resume and continue
def test_resume_command_repeats_the_users_command_in_the_run_dir(monkeypatch, tmp_path: Path):
    from rlhf_exp.runner import _resume_command

    argv = ["run.py", "method=dpo", "+dataset.x=a b", "overwrite=true", "resume_from=/ckpt"]
    monkeypatch.setattr(sys, "argv", [*argv, "hydra.run.dir=old"])
    assert _resume_command(tmp_path, checkpoint=True) == (
        f"python run.py method=dpo '+dataset.x=a b' hydra.run.dir={tmp_path} resume_from=latest"
    )
    # before its first checkpoint: from the start again, as the user started it
    assert _resume_command(tmp_path, checkpoint=False) == (
        f"python run.py method=dpo '+dataset.x=a b' resume_from=/ckpt hydra.run.dir={tmp_path}"
    )


def test_a_rerun_sweep_skips_finished_jobs_and_restarts_interrupted_ones(tmp_path: Path):
    from rlhf_exp.runner import _previous_attempt

    config = "method:\n  name: sft\nresume_from: null\n"
    (tmp_path / "config.yaml").write_text(config)
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"status": "interrupted", "phase": "setup", "step": None}))
    data = '{"preference": "aa"}'
    (tmp_path / "data.json").write_text(data)
    assert _previous_attempt(tmp_path, config, data) is None  # no checkpoint: it starts again
    (tmp_path / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "checkpoint-2" / "COMPLETE").write_text("2\n")
    assert _previous_attempt(tmp_path, config, data) == "resumable"
    assert _previous_attempt(tmp_path, config, '{"preference": "bb"}') is None  # edited data
    metrics.write_text(json.dumps({"method": "sft", "train/global_step": 4}))
    assert _previous_attempt(tmp_path, config, data) == "finished"


# --------------------------------------------------------------------------- the report
def _job(sweep: Path, name: str, method: dict, files: dict[str, str]) -> None:
    """A job dir as Hydra and the runner leave it: overrides, composed config, `files`."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in name.split(",")))
    (job / ".hydra" / "config.yaml").write_text(json.dumps({"method": method, "seed": 0}))
    for file, text in files.items():
        (job / file).write_text(text)


def test_report_shows_running_and_interrupted_jobs_with_method_and_knob(tmp_path: Path):
    sweep = tmp_path / "sweep"
    host = socket.gethostname()
    gone = subprocess.Popen(["true"])  # a process that has ended: its job was killed
    gone.wait()
    # no metrics yet: method and knob come from the job's config (the arm names neither)
    running = {RUNNING_MARKER: json.dumps({"pid": os.getpid(), "host": host})}
    _job(sweep, "arm=dpo_beta_0.5,seed=0", {"name": "dpo", "beta": 0.5}, running)
    stopped = {"method": "ppo", "knob": "kl_coef=0.05", "status": "interrupted"}
    stopped |= {"signal": "SIGTERM", "phase": "training", "step": 4}
    stopped |= {"resume": "python run.py -m arm=x"}
    _job(sweep, "arm=ppo_kl_0.05,seed=0", {"name": "ppo"}, {"metrics.json": json.dumps(stopped)})
    killed = {RUNNING_MARKER: json.dumps({"pid": gone.pid, "host": host})}
    _job(sweep, "arm=kto_beta_0.1,seed=0", {"name": "kto", "beta": 0.1}, killed)

    assert [j.status for j in load_jobs(sweep)] == ["running", "interrupted", "interrupted"]
    report = build_report(sweep).read_text()
    assert "3 runs, 0 failed, 2 interrupted, 1 running." in report
    assert "Every run: `seed=0`." in report  # each row named by its arm alone
    assert f"| arm=dpo_beta_0.5 | dpo | beta=0.5 | 0 | **running**: pid {os.getpid()} |" in report
    assert "| ppo | kl_coef=0.05 | 0 | **interrupted**: SIGTERM during training at step 4 |" in (
        report
    )
    assert "| kto | beta=0.1 | 0 | **interrupted**: killed (no metrics.json) |" in report
    assert "**Sweep interrupted**" in report and "`python run.py -m arm=x`" in report
    assert "still running" in report and "**failed**" not in report


# ------------------------------------------------------------------- the real command line
def _signal_when(proc: subprocess.Popen, ready: Callable[[], bool], sig: int) -> int:
    """Send `sig` once `ready()`; the exit code."""
    deadline = time.monotonic() + 300
    while not ready():
        assert proc.poll() is None, "exited before the moment to signal it"
        assert time.monotonic() < deadline, "the moment to signal it never came"
        time.sleep(0.05)
    proc.send_signal(sig)
    return proc.wait(timeout=300)


def _run_printed(command: str) -> subprocess.CompletedProcess:
    """Run a command as printed for the user (`python run.py ...`), from the same dir."""
    args = shlex.split(command)
    assert args[:2] == ["python", "run.py"], command
    return run_cli(*args[2:])


def _printed(stderr: str, prefix: str) -> str:
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith(prefix)]
    return line.removeprefix(prefix)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("faults") / "cache"


@pytest.mark.slow
def test_sigterm_stops_a_sweep_and_running_it_again_continues_it(tmp_path: Path, cache: Path):
    sweep = tmp_path / "sweep"
    args = ["-m", "method=sft", *SMALL, *SFT, "seed=0,1,2", f"paths.root_dir={tmp_path}"]
    args += [f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(*args, output=tmp_path / "first")
    code = _signal_when(  # mid job 2: after its first checkpoint
        proc, lambda: any(sweep.glob("*seed=1/checkpoints/*/COMPLETE")), signal.SIGTERM
    )
    stderr = (tmp_path / "first.stderr").read_text()
    assert code == 143, stderr[-3000:]
    assert "Traceback" not in stderr
    (done,), (cut,) = sweep.glob("*seed=0"), sweep.glob("*seed=1")
    assert not list(sweep.glob("*seed=2"))  # job 3 never started
    assert "status" not in json.loads((done / "metrics.json").read_text())
    record = json.loads((cut / "metrics.json").read_text())
    assert (record["status"], record["signal"], record["phase"]) == (
        "interrupted",
        "SIGTERM",
        "training",
    )
    assert not (cut / RUNNING_MARKER).exists()
    report = (sweep / "comparison.md").read_text()
    assert "**Sweep interrupted** (SIGTERM during job" in report
    assert "2 runs, 0 failed, 1 interrupted." in report
    assert "| seed=1 | sft |" in report  # the one override that tells it from job 1
    assert "**interrupted**: SIGTERM during training at step" in report

    again = _run_printed(_printed(stderr, "continue with: "))
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"{done}: finished before with this config; skipped" in log
    assert f"{cut}: interrupted before; resuming from its latest checkpoint" in log
    for job in sweep.glob("*seed=*"):
        assert json.loads((job / "metrics.json").read_text())["train/global_step"] == 3
    report = (sweep / "comparison.md").read_text()
    assert "3 runs, 0 failed." in report and "interrupted" not in report


@pytest.mark.slow
def test_sigint_during_dpo_precompute_stops_at_once_and_the_printed_command_resumes(
    tmp_path: Path, cache: Path
):
    run_dir = tmp_path / "dpo"
    args = ["method=dpo", *SMALL, "method.max_steps=2", "eval.reward_model=false", *SFT_STAGE]
    args += [f"paths.root_dir={tmp_path}", f"paths.cache_dir={cache}", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, output=tmp_path / "first")
    stderr_file = tmp_path / "first.stderr"
    code = _signal_when(
        proc, lambda: "Computing reference log probs" in stderr_file.read_text(), signal.SIGINT
    )
    stderr = stderr_file.read_text()
    assert code == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted by SIGINT during precompute (no checkpoint yet)" in stderr
    record = json.loads((run_dir / "metrics.json").read_text())
    assert (record["status"], record["phase"], record["step"]) == (
        "interrupted",
        "precompute",
        None,
    )

    resumed = _run_printed(_printed(stderr, "resume with: "))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "status" not in metrics and metrics["train/global_step"] == 2
