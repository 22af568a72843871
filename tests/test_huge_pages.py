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


HEAP_PROBE = """
import re
import rlhf_exp  # first, as run.py does
import torch
from rlhf_exp.memory import _malloc_trim, release_freed_memory

def advised_heap_mb():
    total = 0
    for block in re.split(r"\\n(?=[0-9a-f]+-[0-9a-f]+ )", open("/proc/self/smaps").read()):
        head = block.split("\\n", 1)[0]
        if head.endswith("[heap]") and " hg" in re.search(r"VmFlags:(.*)", block).group(1):
            start, end = (int(x, 16) for x in head.split()[0].split("-"))
            total += end - start
    return total >> 20

assert _malloc_trim() is not None, "not glibc"
t = torch.ones(20 << 18)  # a 20 MB block, mmapped; freeing it raises glibc's mmap threshold
del t
kept = [torch.ones(4 << 18) for _ in range(8)]  # so these 4 MB tensors come from the heap
print(advised_heap_mb(), end=" ")
del kept
release_freed_memory()
print(advised_heap_mb())
"""


@pytest.mark.skipif(
    not THP_MODE.is_file() or "[madvise]" not in THP_MODE.read_text(),
    reason="heap ranges keep the advice only where the kernel gives huge pages on advice alone",
)
def test_trimming_the_heap_drops_the_advice_its_freed_tensors_left() -> None:
    """Else khugepaged refills the pages the trim returned, as whole 2 MB pages."""
    out = subprocess.run(
        [sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True, check=True
    ).stdout.split()
    while_held, after_trim = map(int, out)
    assert while_held >= 8  # the setup holds: torch's advice lands on the heap
    assert after_trim == 0
