"""Peak resident memory of one run, also when several runs share a process (a multirun).

`resource.getrusage` only knows the peak of the whole process, so a second job in the same
process would inherit the first one's peak; this samples `/proc/self/statm` in a background
thread instead, from the run's start to its end (short spikes between samples are missed).
On a CUDA machine the GPU's peak comes from torch's allocator, reset when a run starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import resource
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

_STATM = Path("/proc/self/statm")
log = logging.getLogger(__name__)


def current_rss_bytes() -> int:
    """Resident memory now; without /proc (macOS) the process's lifetime peak instead."""
    if _STATM.is_file():
        return int(_STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


@functools.cache
def _glibc(function: str) -> Callable[..., int] | None:
    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    return getattr(libc, function, None)  # glibc only (not macOS, not musl)


def release_freed_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's `malloc_trim`).

    glibc keeps memory freed by torch's CPU tensors below its mmap threshold (up to 32 MB) in
    the heap, fragmented, so the RSS of a 124M run only ever grew: each phase (held-out
    scoring, training steps, saving) started from the previous one's high-water mark instead
    of from the memory still in use (benchmarks/NOTES.md, "Sticky heap"). The call takes
    milliseconds, but every page it returns faults in again when next used: call it where a
    run changes phase (and between scoring batches), not between two training steps.
    """
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim(0)


# mallopt's parameters (malloc.h) and the values glibc's own dynamic thresholds reach on 64-bit
# once a 32 MB block has been freed (every run at 124M frees many)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_MMAP_THRESHOLD_MAX = 32 << 20
_MMAP_MAX_DEFAULT = 65536
_INT_MAX = 2**31 - 1


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd")
        + ("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")
    ]


def heap_info() -> _MallInfo2 | None:
    """glibc's `mallinfo2()`: `arena` is the heap's size, `fordblks` its free bytes, `hblkhd`
    the bytes in blocks mapped on their own; None without glibc 2.33 or newer."""
    mallinfo2 = _glibc("mallinfo2")
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    return mallinfo2()


def _malloc_tuned() -> bool:
    """glibc's malloc configured by the environment (its `MALLOC_*_` variables or tunables)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return "glibc.malloc." in tunables or any(
        name.startswith("MALLOC_") and name.endswith("_") for name in os.environ
    )


def _map_large_blocks_again() -> None:
    """glibc's mapping of large blocks back, at the thresholds its dynamic ones reach at 124M
    (setting them turns the dynamic adjustment off), and the heap's free pages to the OS."""
    mallopt = _glibc("mallopt")
    mallopt(_M_MMAP_MAX, _MMAP_MAX_DEFAULT)
    mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_MAX)
    release_freed_memory()


class HeapReuse:
    """What `heap_reused()` yields: call `step_done()` after each optimiser step.

    glibc cannot always hand a freed large block out again: torch asks for 2 MB alignment,
    which glibc serves from a free chunk only with 2 MB to spare, and a small block allocated
    from the heap's top while a large one lived keeps the freed one from merging with what
    follows it. Then steps grow the heap by their large blocks instead of reusing them (in a
    fresh process: sometimes from the first step on; with a 64 KiB block kept per step, every
    time; DPO at 124M: by its 147 MiB embedding gradient at every step). So the RSS after the
    first step, plus the heap's free bytes then (one more step's freed blocks), is a limit:
    past it, large blocks are mapped on their own again for the rest of the span, and the
    heap's free pages go back to the OS.
    """

    def __init__(self, active: bool) -> None:
        self.active = active
        self._limit: int | None = None

    def step_done(self) -> None:
        if not self.active:
            return
        rss = current_rss_bytes()
        if self._limit is None:
            self._limit = rss + heap_info().fordblks
        elif rss > self._limit:
            log.info(
                "heap_reused: the heap grew past %.0f MiB instead of reusing freed blocks; "
                "large blocks are mapped afresh for the rest of this span",
                self._limit / 2**20,
            )
            self.active = False
            _map_large_blocks_again()


@contextlib.contextmanager
def heap_reused() -> Iterator[HeapReuse]:
    """Inside: every C allocation comes from glibc's heap and stays there when freed, so a
    loop that frees and allocates the same large tensors step after step can reuse pages
    already faulted in; on leaving, the freed pages go back to the OS (`release_freed_memory`).

    Outside, glibc maps every block over its mmap threshold (32 MB at most) afresh and unmaps
    it when freed: each PPO update step at 124M faults in ~0.9 GB of embedding gradients,
    logits and their gradients again, slowly on a VM. PPO's update runs inside, one span per
    iteration: 1.06-1.12x faster at 124M for +2-3% peak RSS. TRL's trainers do not: SFT at
    124M ran 1.25x faster inside, but its heap grew by 147 MiB every few steps without end
    (DPO's: every step; benchmarks/NOTES.md, "The heap span over TRL's training"). Whether
    glibc reuses a freed block depends on where small blocks landed meanwhile: the yielded
    `HeapReuse` bounds the heap when it does not.

    Only with huge pages on (`THP_MEM_ALLOC_ENABLE=1`, the package's default): torch then
    aligns blocks of 2 MB and more to 2 MB, and the padding leaves glibc room to serve the
    next request of a freed block's size from it. At torch's usual 64-byte alignment small
    allocations take the few bytes of slack beside a freed block, and the heap grew by the
    whole block at every step (measured). Not when the user tuned glibc's malloc by its
    environment (`MALLOC_MMAP_THRESHOLD_=2097152` is the README's knob for a run short of
    memory): their setting stands. A no-op without glibc.
    """
    mallopt = _glibc("mallopt")
    if (
        mallopt is None
        or _glibc("mallinfo2") is None  # the limit reads the heap's free bytes
        or os.environ.get("THP_MEM_ALLOC_ENABLE") != "1"
        or _malloc_tuned()
    ):
        yield HeapReuse(active=False)
        return
    mallopt(_M_MMAP_MAX, 0)
    mallopt(_M_TRIM_THRESHOLD, _INT_MAX)  # free() must not shrink the heap's top either
    heap = HeapReuse(active=True)
    try:
        yield heap
    finally:
        if heap.active:
            _map_large_blocks_again()


class PeakMemory:
    """`start()` ... `stop()` -> peak RSS in MiB over that span, sampled every `interval` s."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, current_rss_bytes())
            if self._stop.wait(self.interval):
                return

    def start(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():  # this run's GPU peak, not an earlier job's
            torch.cuda.reset_peak_memory_stats()
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop sampling (again: a no-op) and return the peak in MiB."""
        if not self._stop.is_set():
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, current_rss_bytes())
        return self.peak / 2**20


def memory_metrics(peak_rss_mb: float) -> dict[str, float]:
    """metrics.json's memory entries: the host's peak RSS and, on a CUDA machine, the GPU's
    peak held by tensors (`torch.cuda.max_memory_allocated`; torch's cache reserves more)."""
    import torch

    metrics = {"memory/peak_rss_mb": round(peak_rss_mb, 1)}
    if torch.cuda.is_available():
        metrics["memory/peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return metrics
