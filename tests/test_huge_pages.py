"""Importing rlhf_exp asks torch for transparent huge pages for large tensors
(`THP_MEM_ALLOC_ENABLE`, rlhf_exp/__init__.py), unless the user said otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

# One fresh process per setting: torch reads the variable once, at its first allocation.
PROBE = """
import os, resource
import rlhf_exp  # first, as run.py and the rlhf-exp script do
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(64 << 20, dtype=torch.uint8)  # 64 MB written once
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(os.environ.get("THP_MEM_ALLOC_ENABLE", "unset"), faults)
"""


def _probe(**env: str) -> tuple[str, int]:
    """(THP_MEM_ALLOC_ENABLE as the process saw it, page faults writing a 64 MB tensor)."""
    clean = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=clean | env, capture_output=True, text=True, check=True
    )
    value, faults = out.stdout.split()
    return value, int(faults)


@pytest.fixture(scope="module")
def probes() -> dict[str, tuple[str, int]]:
    return {"default": _probe(), "user_off": _probe(THP_MEM_ALLOC_ENABLE="0")}


def test_on_by_default_and_a_users_value_wins(probes: dict[str, tuple[str, int]]) -> None:
    assert probes["default"][0] == "1"
    assert probes["user_off"][0] == "0"


@pytest.mark.skipif(
    not THP_MODE.is_file() or "[madvise]" not in THP_MODE.read_text(),
    reason="the advice only shows where the kernel gives huge pages on advice alone",
)
def test_a_large_tensor_faults_in_huge_pages(probes: dict[str, tuple[str, int]]) -> None:
    small_pages = probes["user_off"][1]
    assert small_pages >= 15_000  # 64 MB in 4 KiB pages is 16,384 faults
    assert probes["default"][1] < small_pages / 10  # 2 MB pages: ~32 faults
