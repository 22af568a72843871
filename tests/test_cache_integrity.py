"""No poisoned or stale cache, exact resume (issue 18): what a stop, a reused dir, a full disk
or rejected data leaves behind, and what the next run makes of it.

The cache's own mechanics (hashes, locks, temp dirs) are in test_artifacts.py; here they run
inside real runs (tiny model, `debug=fast`), in-process where the behaviour shows there.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rlhf_exp.artifacts import ArtifactCache, NoSpaceLeft, config_hash
from rlhf_exp.config.schema import validate
from rlhf_exp.context import stage_key, upstream_run
from rlhf_exp.errors import UserError
from rlhf_exp.runner import (
    DATA_FILE,
    RUN_LOCK,
    RunDirInUse,
    _previous_attempt,
    claim_run_dir,
    execute,
    hold_run_dir,
)
from tests.conftest import ROOT, run_cli, start_cli

# Numbers that measure this machine, not the run: never compared between two runs.
TIMING = ("time/", "throughput/", "memory/")
# Fewer rows than debug=fast: the tests here train a few steps, and score and tokenise less
# (the tiny base is keyed by the generator, not the row counts: shared with other tests).
SMALL = ["dataset.n_sft=400", "dataset.n_pairs=400"]


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(TIMING)}


@pytest.fixture
def run_in(compose_cfg, shared_cache: Path):
    """`run_in(run_dir, *overrides)` -> metrics of `execute` in `run_dir`, shared cache."""

    def run(run_dir: Path, *overrides: str) -> dict:
        cfg = compose_cfg("debug=fast", *SMALL, f"paths.cache_dir={shared_cache}", *overrides)
        return execute(validate(cfg), run_dir, ArtifactCache(shared_cache))

    return run


def _killed_copy(src: Path, dst: Path, keep: str) -> None:
    """`dst` as `src` would be had it been killed (kill -9) right after checkpoint `keep`."""
    assert (src / "checkpoints" / keep / "COMPLETE").is_file(), keep
    shutil.copytree(src, dst)
    for path in dst.iterdir():
        if path.name != "checkpoints":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    for checkpoint in (dst / "checkpoints").glob("checkpoint-*"):
        if checkpoint.name != keep:
            shutil.rmtree(checkpoint)


def _logged(run_dir: Path, checkpoint: str) -> list[dict]:
    """The trainer's log history in a checkpoint, without its timings."""
    state = run_dir / "checkpoints" / checkpoint / "trainer_state.json"
    return [
        {k: v for k, v in entry.items() if not any(t in k for t in ("time", "per_second"))}
        for entry in json.loads(state.read_text())["log_history"]
    ]


def test_resume_after_any_checkpoint_reproduces_the_run(run_in, tmp_path: Path):
    """Killed after its final checkpoint, a run resumes straight to saving and evaluating
    (no step 5 of 4); killed mid-way, its train/loss still averages every step, and what
    it logs after the resume is what the uninterrupted run logged."""
    args = [
        "method=sft",
        "method.max_steps=4",
        "method.save_steps=3",
        "method.logging_steps=2",  # checkpoint-3 falls between two logs
        "method.lr_scheduler_type=constant",
    ]
    straight = run_in(tmp_path / "straight", *args)
    weights = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    for keep in ("checkpoint-4", "checkpoint-3"):
        _killed_copy(tmp_path / "straight", tmp_path / keep, keep)
        resumed = run_in(tmp_path / keep, *args, "resume_from=latest")
        assert _comparable(resumed) == _comparable(straight), keep
        again = load_file(str(tmp_path / keep / "model" / "model.safetensors"))
        assert all(again[n].equal(w) for n, w in weights.items()), keep
    expected = _logged(tmp_path / "straight", "checkpoint-4")
    assert _logged(tmp_path / "checkpoint-3", "checkpoint-4") == expected


def test_upstream_stages_never_inherit_the_runs_resume_target(compose_cfg, tmp_path: Path):
    checkpoint = tmp_path / "dpo" / "checkpoints" / "checkpoint-30"
    checkpoint.mkdir(parents=True)
    clean = validate(compose_cfg("method=dpo", "debug=fast"))
    resuming = dataclasses.replace(clean, resume_from=str(checkpoint))
    for stage in ("sft", "reward"):
        assert upstream_run(resuming, stage) == upstream_run(clean, stage)
        assert upstream_run(resuming, stage).resume_from is None
        assert stage_key(upstream_run(resuming, stage)) == stage_key(upstream_run(clean, stage))


def _leftovers(cache: Path, key: str = "") -> list[str]:
    """Temp dirs, build dirs and lock files in the cache's stage dirs (of entry `key` only:
    in a cache shared with other xdist workers, their builds in progress are no leftovers)."""
    return sorted(
        str(p.relative_to(cache))
        for p in cache.glob("*/.*")
        if (".tmp-" in p.name or p.name.endswith(".build")) and key in p.name
    ) + sorted(
        str(p.relative_to(cache))
        for p in cache.rglob("*.lock")
        if "hf_" not in str(p) and key in p.name
    )


@pytest.mark.slow
def test_interrupted_upstream_build_resumes_with_the_printed_command(
    compose_cfg, tmp_path: Path, shared_cache: Path
):
    """SIGINT while the SFT stage trains inside the cache (for a reward run): the printed
    command is the user's own, in their run dir, and it continues the SFT build from its
    checkpoint. The first run already has resume_from=latest (nothing to resume yet)."""
    run_dir = tmp_path / "run"
    config = [
        "method=reward",
        "debug=fast",
        *SMALL,
        "method.max_steps=1",
        "upstream.sft.overrides.max_steps=4",
        "+upstream.sft.overrides.save_steps=1",
    ]
    key = config_hash(stage_key(upstream_run(validate(compose_cfg(*config)), "sft")))
    entry, work = shared_cache / "sft" / key, shared_cache / "sft" / f".{key}.build"
    args = [
        *config,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",  # the tiny base and the data of the other tests
        f"hydra.run.dir={run_dir}",
        "resume_from=latest",
    ]
    proc = subprocess.Popen(
        [sys.executable, "run.py", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not list(work.glob("checkpoints/checkpoint-*/COMPLETE")):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the SFT build saved no checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    assert "while training upstream stage 'sft'" in stderr
    command = stderr.split("resume with: ", 1)[1].splitlines()[0]
    assert f"hydra.run.dir={run_dir}" in command and ".build" not in command
    assert work.is_dir() and not entry.exists()

    argv = shlex.split(command)
    assert argv[0] == "python"
    resumed = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "upstream sft: resuming its interrupted build" in output
    # the run's own resume_from=latest: no checkpoint of its own yet
    assert f"resume_from=latest: no complete checkpoint in {run_dir}/checkpoints yet" in output
    assert json.loads((entry / "metrics.json").read_text())["train/global_step"] == 4
    assert not (entry / "checkpoints").exists()  # optimiser states are no part of the entry
    assert _leftovers(shared_cache, key) == []
    assert json.loads((run_dir / "metrics.json").read_text())["train/global_step"] == 1


def test_disk_full_is_one_line_and_leaves_no_partial_entry(
    run_in, compose_cfg, tmp_path: Path, shared_cache: Path, monkeypatch
):
    import rlhf_exp.methods.sft as sft

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sft, "save_merged", full)
    # an upstream stage building in the cache: no entry, build dir or lock is left
    args = ["method=reward", "upstream.sft.overrides.max_steps=2"]
    with pytest.raises(NoSpaceLeft) as err:
        run_in(tmp_path / "reward", *args)
    assert str(err.value).startswith(f"no space left on {shared_cache / 'sft'} (")
    child = upstream_run(validate(compose_cfg("debug=fast", *SMALL, *args)), "sft")
    key = config_hash(stage_key(child))
    assert not [p for p in (shared_cache / "sft").iterdir() if key in p.name]
    # the run's own saves
    with pytest.raises(NoSpaceLeft, match=f"no space left on {tmp_path / 'sft'} "):
        run_in(tmp_path / "sft", "method=sft", "method.max_steps=2")


def test_rejected_data_leaves_no_conversion_in_the_cache(compose_cfg, tmp_path: Path):
    data = tmp_path / "pairs.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(8))
    )
    cache = tmp_path / "cache"
    cfg = compose_cfg(
        "method=sft",
        "debug=fast",
        "dataset=files",
        f"+dataset.data_files.preference={data}",
        f"paths.cache_dir={cache}",
    )
    with pytest.raises(UserError):
        execute(validate(cfg), tmp_path / "run", ArtifactCache(cache))
    assert [p for p in cache.rglob("*") if p.is_file()] == []


def test_a_dir_holding_another_runs_files_is_refused(tmp_path: Path):
    mine = "seed: 0\nresume_from: null\nmethod:\n  name: sft\n  max_steps: 40\n"
    run_dir = tmp_path / "run"
    claim_run_dir(run_dir, mine, overwrite=False)  # no dir yet
    (run_dir / ".hydra").mkdir(parents=True)  # what Hydra writes first is no other run's
    (run_dir / "run.log").write_text("")
    claim_run_dir(run_dir, mine, overwrite=False)
    (run_dir / "config.yaml").write_text(mine.replace("null", "latest") + "new_key: 1\n")
    claim_run_dir(run_dir, mine, overwrite=False)  # the same run (resumed, newer code)

    (run_dir / "config.yaml").write_text(mine.replace("40", "999"))
    (run_dir / "checkpoints" / "checkpoint-999").mkdir(parents=True)
    with pytest.raises(RunDirInUse) as err:
        claim_run_dir(run_dir, mine, overwrite=False)
    assert str(err.value) == (
        f"run dir {run_dir} holds a run with another config; choose another hydra.run.dir, "
        "or pass overwrite=true to delete its contents"
    )
    claim_run_dir(run_dir, mine, overwrite=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "run.log"]


def test_the_same_config_on_changed_data_is_another_run(tmp_path: Path):
    config = "seed: 0\nmethod:\n  name: dpo\n"
    before = json.dumps({"preference": "aa", "sft": "bb"})
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(config)
    (run_dir / "metrics.json").write_text('{"method": "dpo", "objective": 1.0}\n')
    claim_run_dir(run_dir, config, overwrite=False)  # a dir from before data.json: its own
    (run_dir / DATA_FILE).write_text(before)
    claim_run_dir(run_dir, config, overwrite=False, data_text=before)
    assert _previous_attempt(run_dir, config, before) == "finished"  # a sweep skips it

    edited = json.dumps({"preference": "cc", "sft": "bb"})
    with pytest.raises(RunDirInUse) as err:
        claim_run_dir(run_dir, config, overwrite=False, data_text=edited)
    assert str(err.value) == (
        f"run dir {run_dir} holds this config's run on other data "
        "(dataset.data_files.preference changed since); choose another hydra.run.dir, or pass "
        "overwrite=true to delete its contents"
    )
    assert _previous_attempt(run_dir, config, edited) is None  # neither skipped nor resumed
    claim_run_dir(run_dir, config, overwrite=True, data_text=edited)
    assert list(run_dir.iterdir()) == []


def test_cli_refuses_another_runs_dir_and_leaves_its_files(tmp_path: Path):
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\nmethod:\n  name: dpo\n")
    (run_dir / "metrics.json").write_text('{"method": "dpo"}\n')
    result = run_cli("method=sft", f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: run dir {run_dir} holds a run with another config; choose another "
        "hydra.run.dir, or pass overwrite=true to delete its contents"
    )
    assert (run_dir / "metrics.json").read_text() == '{"method": "dpo"}\n'


def test_a_run_refused_before_it_claims_a_dir_leaves_the_run_there_as_it_was(tmp_path: Path):
    run_dir = tmp_path / "finished"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\nmethod:\n  name: dpo\n")
    (run_dir / "metrics.json").write_text('{"method": "dpo", "objective": 0.5}\n')
    # a bad value, as in a mistyped resume command
    result = run_cli("method=dpo", "method.beta=-1", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == "error: method.beta=-1.0 is invalid: must be > 0"
    assert (run_dir / "metrics.json").read_text() == '{"method": "dpo", "objective": 0.5}\n'
    fresh = tmp_path / "fresh"  # a dir of its own: the failure is recorded there
    result = run_cli("method=dpo", "method.beta=-1", f"hydra.run.dir={fresh}")
    assert json.loads((fresh / "metrics.json").read_text())["status"] == "failed"


def test_overwrite_never_empties_a_dir_that_is_not_a_runs(tmp_path: Path):
    mine = tmp_path / "project"
    (mine / "src").mkdir(parents=True)
    (mine / "src" / "main.py").write_text("print('mine')\n")
    (mine / "notes.txt").write_text("keep\n")
    result = run_cli("method=sft", "debug=fast", f"hydra.run.dir={mine}", "overwrite=true")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: run dir {mine} holds files of something else (no config.yaml); choose another "
        "hydra.run.dir"
    )
    assert (mine / "src" / "main.py").read_text() == "print('mine')\n"
    assert (mine / "notes.txt").read_text() == "keep\n"


def test_a_run_dir_is_held_by_one_run_at_a_time(tmp_path: Path):
    run_dir = tmp_path / "run"
    held = hold_run_dir(run_dir)
    with pytest.raises(RunDirInUse) as err:
        hold_run_dir(run_dir)  # another open of the lock, as another process makes
    assert str(err.value) == (
        f"run dir {run_dir} is in use by a run still going; wait for it to end, "
        "or choose another hydra.run.dir"
    )
    held.close()
    assert not (run_dir / RUN_LOCK).exists()
    hold_run_dir(run_dir).close()


def test_cli_refuses_a_dir_another_process_runs_in_even_with_overwrite(tmp_path: Path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("seed: 1\nmethod:\n  name: dpo\n")
    (run_dir / "RUNNING").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    with hold_run_dir(run_dir):  # this test process plays the run still going
        result = run_cli(
            "method=sft",
            "debug=fast",
            f"paths.root_dir={tmp_path}",
            f"hydra.run.dir={run_dir}",
            "overwrite=true",
        )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip() == (
        f"error: run dir {run_dir} is in use by a run still going (pid {os.getpid()}); wait "
        "for it to end, or choose another hydra.run.dir"
    )
    assert (run_dir / "config.yaml").read_text() == "seed: 1\nmethod:\n  name: dpo\n"
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.slow  # trains: the lock itself is checked fast above
def test_two_runs_of_one_config_started_together_do_not_share_a_dir(tmp_path: Path):
    # what two identical commands started in the same second get: one default run dir
    args = ["method=sft", "debug=fast", *SMALL, "method.max_steps=3", f"paths.root_dir={tmp_path}"]
    run_dir = tmp_path / "same_second"
    jobs = [start_cli(*args, f"hydra.run.dir={run_dir}") for _ in range(2)]
    outputs = ["".join(job.communicate(timeout=600)) for job in jobs]
    assert sorted(job.returncode for job in jobs) == [0, 2], outputs
    refused = outputs[[job.returncode for job in jobs].index(2)]
    assert f"error: run dir {run_dir} is in use by a run still going" in refused
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "status" not in metrics and metrics["method"] == "sft"  # the run that went, whole
    assert not (run_dir / RUN_LOCK).exists() and not (run_dir / "RUNNING").exists()


@pytest.mark.slow  # trains
def test_runs_started_in_the_same_second_get_a_default_run_dir_each(tmp_path: Path):
    common = ["method=sft", "debug=fast", *SMALL, "method.max_steps=2"]
    common.append(f"paths.root_dir={tmp_path}")
    jobs = [start_cli(*common, f"seed={seed}") for seed in (1, 2)]  # forked within milliseconds
    outputs = ["".join(job.communicate(timeout=600)) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    run_dirs = sorted((tmp_path / "outputs" / "runs").glob("*/*"))
    assert [d.name[-4:] for d in run_dirs] == ["_sft", "_sft"]
    seeds = sorted(yaml.safe_load((d / "config.yaml").read_text())["seed"] for d in run_dirs)
    assert seeds == [1, 2]
    assert all("status" not in json.loads((d / "metrics.json").read_text()) for d in run_dirs)
