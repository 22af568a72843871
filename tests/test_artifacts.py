"""The artifact cache: build once, reuse, survive crashes and concurrent builders."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path

import pytest

from rlhf_exp.artifacts import MANIFEST, ArtifactCache, config_hash, is_complete


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
    assert list((tmp_path / "sft").iterdir()) == [
        tmp_path / "sft" / f"{config_hash({'k': 1})}.lock"
    ]


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
