"""Shared fixtures: compose real configs from conf/ with outputs pointed at tmp dirs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test processes on two cores: one thread each (and in the runs they start), else
    # torch's default of a thread per core puts 4 spinning OpenMP threads on 2 cores.
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    # and the comparison sweeps they run go one job at a time (hydra/launcher=local_parallel)
    os.environ["RLHF_EXP_SWEEP_JOBS"] = "1"

from rlhf_exp.context import CONF_DIR  # noqa: E402  (after the thread settings: imports torch)
from tests.cli_fork import ROOT, start_cli, stop_zygote  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)  # in case torch was imported before the setting above


def compose_config(overrides: list[str], root: Path) -> DictConfig:
    """The composed config of `python run.py <overrides>`, with every path under `root`."""
    paths = [f"paths.root_dir={root}", f"paths.output_dir={root}/run"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*paths, *overrides])


@pytest.fixture
def compose_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    return lambda *overrides: compose_config(list(overrides), tmp_path)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One artifact cache for the method tests: the tiny base and fast SFT policy build once.

    Tests that check the cache's own behaviour use a fresh one instead. Under pytest-xdist
    every worker shares one (the parent of the workers' temp dirs): the cache's locks let
    one worker build an entry while the others wait for it, instead of each building its own.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = tmp_path_factory.getbasetemp().parent / "shared"
        shared.mkdir(exist_ok=True)
        return shared / "cache"
    return tmp_path_factory.mktemp("shared") / "cache"


def run_cli(*args: str, cwd: Path = ROOT, timeout: float = 600) -> subprocess.CompletedProcess:
    """`python run.py ARGS` in a process of its own, as a user would run it (tests/cli_fork.py:
    forked from an interpreter that has already imported what run.py imports)."""
    proc = start_cli(*args, cwd=cwd)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.wait(), stdout, stderr)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_zygote()


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """A one-layer tiny LM and its tokenizer (pad distinct from eos), built offline."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from rlhf_exp.config.schema import TinySpec
    from rlhf_exp.models.tiny import build_tiny_base

    out = tmp_path_factory.mktemp("tiny")
    corpus = [f"the film number {i} was fine and then it ended." for i in range(300)]
    build_tiny_base(TinySpec(n_layer=1, n_embd=32, n_head=2, vocab_size=300), corpus, out)
    return GPT2LMHeadModel.from_pretrained(out), AutoTokenizer.from_pretrained(out)


@pytest.fixture
def lm_head_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many positions each call of TRL's fused LM head projects, on TRL's code or on ours
    (rlhf_exp/lm_head.py routes each call to exactly one of them)."""
    from rlhf_exp import lm_head

    rows: list[int] = []
    for function in (lm_head._trl_function, lm_head.CpuFusedLogProbs):
        apply = function.apply

        def counted(hidden: Any, *args: Any, apply: Any = apply) -> Any:
            rows.append(hidden.shape[0])
            return apply(hidden, *args)

        monkeypatch.setattr(function, "apply", counted)
    return rows
