"""Several processes through `accelerate launch` with a shipped config
(rlhf_exp/accelerate_configs/cpu.yaml): two CPU processes in one gloo group, as CI runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli

CPU_CONFIG = ROOT / "rlhf_exp" / "accelerate_configs" / "cpu.yaml"


def launch(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run an `accelerate launch` command to its end, output captured. Its temp dir is one of
    its own, removed after: torchelastic leaves a `torchelastic_*` dir behind per launch."""
    with tempfile.TemporaryDirectory(prefix="launch-", ignore_cleanup_errors=True) as tmp:
        return subprocess.run(
            command,
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": tmp},
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def accelerate_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file rlhf_exp/accelerate_configs/cpu.yaml run.py ARGS`."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
    return launch([*command, str(ROOT / "run.py"), *args], timeout)


@pytest.mark.slow
def test_two_cpu_processes_train_and_report_like_one(tmp_path: Path, shared_cache: Path):
    """The reward model here; DPO and PPO in tests/test_sharded.py, beside FSDP and ZeRO."""
    common = [
        "method=reward",
        "debug=fast",
        "method.max_steps=3",
        "dataset.n_eval_prompts=8",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",
    ]
    # one process first: it fills the cache with the upstream stages (README)
    one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-2000:]
    two = accelerate_cli(*common, f"hydra.run.dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-3000:]

    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    launched = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert single["run/processes"] == 1 and launched["run/processes"] == 2
    assert launched["train/global_step"] == single["train/global_step"] == 3
    assert set(launched) == set(single)  # the same result shape, gathered on rank 0
    # one writer: rank 0's TensorBoard files only (as many as one process writes), one model
    events = [list((tmp_path / d / "tensorboard").glob("events.*")) for d in ("one", "two")]
    assert len(events[1]) == len(events[0]) > 0
    assert (tmp_path / "two" / "model" / "config.json").is_file()


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 120) -> int:
    """The pid of the launched process with RANK=`rank` (a grandchild of the launcher)."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(launcher.pid).children(recursive=True):
            try:
                if child.environ().get("RANK") == str(rank) and "run.py" in " ".join(
                    child.cmdline()
                ):
                    return child.pid
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.5)
    raise AssertionError(f"no process with RANK={rank} started")


@pytest.mark.slow
def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path: Path, shared_cache: Path):
    common = [
        "method=reward",
        "debug=fast",
        "dataset.n_sft=400",  # little data to tokenise in each rank: the stop is what is tested
        "dataset.n_pairs=300",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",
    ]
    fill = run_cli(*common, "method.max_steps=1", f"hydra.run.dir={tmp_path / 'fill'}")
    assert fill.returncode == 0, fill.stderr[-2000:]  # the SFT stage, in the cache
    run_dir = tmp_path / "two"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CPU_CONFIG)]
    args = [*common, "method.max_steps=400", "method.save_steps=1000", "method.eval_steps=1000"]
    (tmp_path / "tmp").mkdir()
    proc = subprocess.Popen(
        [*command, str(ROOT / "run.py"), *args, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path / "tmp")},  # torchelastic's dirs: not in /tmp
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rank1 = _rank_pid(proc, 1)
        log = run_dir / "run.log"
        deadline = time.monotonic() + 300
        while "parameters trainable" not in (log.read_text() if log.is_file() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "training never started"
            time.sleep(0.2)
        time.sleep(2)  # a few steps in
        os.kill(rank1, signal.SIGTERM)  # rank 1 only, not the group
        _, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted", stderr[-3000:]
    step = metrics["step"]
    assert 0 < step < 400  # stopped mid-training, not run to the end by rank 0
    # both ranks saved the same step's checkpoint together (their RNG states are in it)
    (ckpt,) = [p for p in (run_dir / "checkpoints").iterdir() if (p / "COMPLETE").is_file()]
    assert ckpt.name.endswith(f"-{step}")
    assert sorted(p.name for p in ckpt.glob("rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
