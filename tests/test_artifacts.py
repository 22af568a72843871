"""The artifact cache: build once, reuse, survive crashes and concurrent builders."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf_exp.artifacts import (
    MANIFEST,
    OWNER_FILE,
    ArtifactCache,
    NoSpaceLeft,
    config_hash,
    is_complete,
    reporting_disk_full,
)
from rlhf_exp.errors import Interrupted


def _write(tmp: Path, text: str = "weights") -> None:
    (tmp / "model").mkdir()
    (tmp / "model" / "w.bin").write_text(text)


def test_hash_ignores_dict_order_and_tracks_values():
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_miss_builds_then_hit_reuses(tmp_path: Path):
    cache, calls = ArtifactCache(tmp_path), []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        _write(tmp)

    first = cache.get_or_build("sft", {"lr": 1}, build)
    second = cache.get_or_build("sft", {"lr": 1}, build)
    other = cache.get_or_build("sft", {"lr": 2}, build)
    assert first == second != other
    assert len(calls) == 2
    assert (first / "model" / "w.bin").read_text() == "weights"
    assert json.loads((first / "key.json").read_text()) == {"lr": 1}
    assert not calls[0].exists()  # the temp dir was renamed into place


def test_failed_build_leaves_no_entry(tmp_path: Path):
    cache = ArtifactCache(tmp_path)

    def build(tmp: Path) -> None:
        _write(tmp)
        raise RuntimeError("killed mid-build")

    with pytest.raises(RuntimeError):
        cache.get_or_build("sft", {"k": 1}, build)
    assert cache.lookup("sft", {"k": 1}) is None
    assert list((tmp_path / "sft").iterdir()) == []  # no temp dir, no lock file


@pytest.mark.parametrize("damage", ["truncate", "delete", "no_manifest"])
def test_damaged_entry_is_rebuilt(tmp_path: Path, damage: str):
    cache = ArtifactCache(tmp_path)
    entry = cache.get_or_build("sft", {"k": 1}, _write)
    weights = entry / "model" / "w.bin"
    if damage == "truncate":
        weights.write_text("we")
    elif damage == "delete":
        weights.unlink()
    else:
        (entry / MANIFEST).unlink()
    assert not is_complete(entry)
    rebuilt = cache.get_or_build("sft", {"k": 1}, lambda tmp: _write(tmp, "fresh"))
    assert rebuilt == entry and is_complete(entry)
    assert weights.read_text() == "fresh"


def _slow_build_job(root: str, log: str) -> None:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough that the second job arrives while this one builds
        _write(tmp)

    ArtifactCache(Path(root)).get_or_build("sft", {"k": 1}, build)


def test_concurrent_processes_build_once(tmp_path: Path):
    log = tmp_path / "builds.log"
    ctx = mp.get_context("spawn")
    jobs = [ctx.Process(target=_slow_build_job, args=(str(tmp_path), str(log))) for _ in range(2)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0, 0]
    assert log.read_text() == "built\n"
    assert ArtifactCache(tmp_path).lookup("sft", {"k": 1}) is not None
    assert not list((tmp_path / "sft").glob("*.lock"))  # released and removed


# ------------------------------------------------------------------ content hashes (issue 18)
def _weights_entry(cache: ArtifactCache, value: float = 1.0) -> Path:
    from safetensors.torch import save_file

    def build(tmp: Path) -> None:
        (tmp / "model").mkdir()
        save_file({"w": torch.full((64, 64), value)}, str(tmp / "model" / "model.safetensors"))

    return cache.get_or_build("sft", {"k": 1}, build)


@pytest.mark.parametrize("where", ["header", "weights"])
def test_same_size_corruption_is_detected_and_rebuilt(tmp_path: Path, caplog, where: str):
    """Bytes changed in place (size kept): the header (every load would fail) or the
    weights (would be used silently) no longer match the sha256 recorded at build time."""
    from safetensors.torch import load_file

    cache = ArtifactCache(tmp_path)
    weights = _weights_entry(cache) / "model" / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as f:
        f.seek(10 if where == "header" else size - 100)
        f.write(b"\0" * 16)
    assert weights.stat().st_size == size
    assert cache.lookup("sft", {"k": 1}) is None
    with caplog.at_level("WARNING", logger="rlhf_exp.artifacts"):
        entry = _weights_entry(cache, value=2.0)
    assert load_file(str(entry / "model" / "model.safetensors"))["w"][0, 0].item() == 2.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "model/model.safetensors does not match the sha256" in warnings[0]
    assert "rebuilding" in warnings[0] and "\n" not in warnings[0]


def test_big_entries_are_hashed_once_per_process(tmp_path: Path, monkeypatch):
    import rlhf_exp.artifacts as artifacts

    cache = ArtifactCache(tmp_path)
    entry = cache.get_or_build("sft", {"k": 1}, _write)
    monkeypatch.setattr(artifacts, "VERIFY_ONCE_BYTES", 0)
    calls = []
    real = artifacts.file_sha256
    monkeypatch.setattr(artifacts, "file_sha256", lambda p: calls.append(p) or real(p))
    assert is_complete(entry) and is_complete(entry)
    assert len(calls) == 2  # w.bin and key.json, once
    (entry / "model" / "w.bin").write_text("wEights")  # changed: its stat changes too
    assert not is_complete(entry)


def test_manifest_without_hashes_is_upgraded(tmp_path: Path):
    cache = ArtifactCache(tmp_path)
    entry = cache.get_or_build("sft", {"k": 1}, _write)
    sizes = {k: v["size"] for k, v in json.loads((entry / MANIFEST).read_text()).items()}
    (entry / MANIFEST).write_text(json.dumps(sizes))  # as written before issue 18
    assert cache.lookup("sft", {"k": 1}) == entry
    assert all("sha256" in v for v in json.loads((entry / MANIFEST).read_text()).values())


# ------------------------------------------------------------- leftovers, locks, disk full
def test_stale_temp_dirs_of_dead_builders_are_removed(tmp_path: Path):
    cache = ArtifactCache(tmp_path)
    kind_dir = tmp_path / "sft"
    kind_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    own_key = kind_dir / f".{config_hash({'k': 1})}.tmp-killed"  # this key: lock is ours
    other_dead = kind_dir / ".0000000000000000.tmp-dead"
    other_alive = kind_dir / ".1111111111111111.tmp-alive"  # another job is building it
    for tmp, pid in ((own_key, dead.pid), (other_dead, dead.pid), (other_alive, os.getpid())):
        tmp.mkdir()
        owner = {"pid": pid, "host": socket.gethostname(), "start": None}
        (tmp / OWNER_FILE).write_text(json.dumps(owner))
    cache.get_or_build("sft", {"k": 1}, _write)
    assert not own_key.exists() and not other_dead.exists()
    assert other_alive.is_dir()


def test_interrupted_resumable_build_is_kept_for_the_next_build(tmp_path: Path):
    cache = ArtifactCache(tmp_path)
    seen = []

    def interrupted(tmp: Path) -> None:
        (tmp / "checkpoints").mkdir()
        raise Interrupted(tmp, 4)

    with pytest.raises(Interrupted):
        cache.get_or_build("sft", {"k": 1}, interrupted, resumable=True)
    work = cache.build_dir("sft", {"k": 1})
    assert (work / "checkpoints").is_dir()
    assert json.loads((work / OWNER_FILE).read_text())["pid"] == os.getpid()

    def resumed(tmp: Path) -> None:
        seen.append((tmp / "checkpoints").is_dir())
        _write(tmp)

    entry = cache.get_or_build("sft", {"k": 1}, resumed, resumable=True)
    assert seen == [True] and is_complete(entry) and not work.exists()
    assert not (entry / OWNER_FILE).exists()

    def failing(tmp: Path) -> None:
        raise ValueError("a bug, not an interrupt")

    with pytest.raises(ValueError):
        cache.get_or_build("sft", {"k": 2}, failing, resumable=True)
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == [entry.name]


def test_disk_full_while_building_is_one_line_and_leaves_nothing(tmp_path: Path):
    cache = ArtifactCache(tmp_path)

    def build(tmp: Path) -> None:
        _write(tmp)
        raise OSError(errno.ENOSPC, "No space left on device")

    for resumable in (False, True):
        with pytest.raises(NoSpaceLeft) as err:
            cache.get_or_build("sft", {"k": 1}, build, resumable=resumable)
        assert str(err.value).startswith(f"no space left on {tmp_path / 'sft'} (")
        assert "\n" not in str(err.value)
        assert list((tmp_path / "sft").iterdir()) == []


def test_torch_write_failure_on_a_full_disk_is_no_space(tmp_path: Path, monkeypatch):
    import shutil as shutil_module

    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage._replace(free=4096))
    with (
        pytest.raises(NoSpaceLeft, match=f"no space left on {tmp_path}"),
        reporting_disk_full(tmp_path),
    ):
        raise torch_error
    monkeypatch.setattr(shutil_module, "disk_usage", lambda p: usage._replace(free=10**12))
    # with space left, the same message has another cause: kept as it is
    with pytest.raises(RuntimeError, match="unexpected pos"), reporting_disk_full(tmp_path):
        raise torch_error


def test_atomic_writes_get_the_mode_of_any_file_the_user_writes(tmp_path: Path):
    from rlhf_exp.artifacts import atomic_write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic_write_text(tmp_path / "metrics.json", "{}")
    mode = (tmp_path / "metrics.json").stat().st_mode & 0o777
    assert mode == plain.stat().st_mode & 0o777 != 0o600
