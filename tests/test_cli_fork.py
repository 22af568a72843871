"""tests/cli_fork.py, the suite's way to run the CLI: a run forked from its zygote prints what a
fresh `python run.py` prints, exits as it exits, and is a process of its own that signals reach."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli_fork import RUN_PY, ForkedRun, _Zygote, cli_env


@pytest.fixture(scope="module")
def zygote():
    started = _Zygote(cli_env())
    yield started
    started.close()
    assert not started.tmp.exists()  # its runs' output files go with it


@pytest.mark.parametrize(
    "args",
    [["--help"], ["model=no_such_model"], ["method=sft", "method.max_steps=-3"]],
    ids=["help", "unknown-option", "bad-value"],
)
def test_a_forked_run_prints_and_exits_as_a_fresh_interpreter(zygote, tmp_path: Path, args):
    args = [*args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"]
    fresh = subprocess.run(
        [sys.executable, RUN_PY, *args], env=cli_env(), capture_output=True, text=True
    )
    forked = zygote.start(args, Path.cwd(), cli_env(), output=None)
    assert isinstance(forked, ForkedRun) and forked.pid > 0
    stdout, stderr = forked.communicate(timeout=300)
    assert (forked.returncode, stdout, stderr) == (fresh.returncode, fresh.stdout, fresh.stderr)
    assert fresh.stdout + fresh.stderr  # it printed something to compare


def test_a_forked_run_is_a_process_that_signals_reach(zygote, tmp_path: Path):
    args = ["method=sft", "debug=fast", f"paths.root_dir={tmp_path}"]
    forked = zygote.start(args, Path.cwd(), cli_env(), output=tmp_path / "out")
    time.sleep(0.5)
    assert forked.poll() is None  # still starting: a one-thread SFT run takes seconds
    forked.send_signal(signal.SIGKILL)
    assert forked.wait(timeout=60) == -signal.SIGKILL
    assert (tmp_path / "out.stderr").is_file()  # the caller's files, left for the caller
    with pytest.raises(subprocess.TimeoutExpired):  # and a run that outlives its timeout
        zygote.start(["--help"], Path.cwd(), cli_env(), output=None).wait(timeout=0)
