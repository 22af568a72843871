"""What this machine computes fast, for `model.precision=auto`.

bf16 autocast pays where the hardware multiplies bf16 natively: CUDA GPUs that support it,
and x86 CPUs with AMX or AVX-512-BF16 (benchmarks/NOTES.md: 1.5-1.7x on every method with a
20M model on an AVX-512-BF16 CPU; nothing on a 0.6M one, hence chosen per model config).
Elsewhere bf16 is emulated and slower than fp32, so `auto` is fp32.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# x86 feature flags (Linux /proc/cpuinfo names) of native bf16 matrix or vector arithmetic.
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags; empty where /proc/cpuinfo does not exist (macOS, Windows)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def native_bf16(flags: set[str] | None = None) -> str | None:
    """Why this machine computes bf16 natively (e.g. "CPU has amx_bf16"), or None.

    Training runs on the GPU when there is one (else on the CPU), so the GPU decides first.
    """
    import torch

    if torch.cuda.is_available():
        if torch.cuda.is_bf16_supported():
            return f"GPU {torch.cuda.get_device_name()} supports bf16"
        return None
    found = [f for f in CPU_BF16_FLAGS if f in (cpu_flags() if flags is None else flags)]
    return f"CPU has {', '.join(found)}" if found else None


def compute_precision(precision: str) -> Any:
    """The context our own forward passes outside a trainer run in (evaluation: sampling,
    reward-model scoring, log-probs): bf16 autocast when the run's `model.precision` settled on
    bf16, as the trainers' steps and PPO's rollouts do; nothing for fp32. Without it a bf16 run
    evaluated in fp32, half as fast (2.2x the matmul time here, benchmarks/NOTES.md)."""
    import torch

    device_type = "cuda" if torch.cuda.is_available() else "cpu"  # where accelerate puts models
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16")


@contextlib.contextmanager
def frozen_weight_casts_cached(model: Any) -> Iterator[None]:
    """Inside autocast, cast frozen weights (LoRA's base, a frozen copy) to bf16 once for the
    block instead of at every forward: torch caches a weight's cast only if it requires grad,
    so sampling from a LoRA policy cast all its base weights again at each decode step. For
    inference blocks only (the cached casts would go stale under an optimiser step): the
    flags come back and the cache is emptied on the way out. Sharded parameters (FSDP's
    DTensors, ZeRO-3's partitions) are left alone.
    """
    import torch

    device_type = next(model.parameters()).device.type
    if not (torch.is_autocast_enabled(device_type) and torch.is_autocast_cache_enabled()):
        yield
        return
    frozen = [
        p
        for p in model.parameters()
        if type(p) is torch.nn.Parameter  # not a quantised or sharded subclass
        and not hasattr(p, "ds_id")  # DeepSpeed ZeRO-3
        and p.is_floating_point()
        and not p.requires_grad
    ]
    for p in frozen:
        p.requires_grad_(True)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(False)
        if frozen:
            torch.clear_autocast_cache()


def auto_precision(flags: set[str] | None = None) -> tuple[str, str]:
    """`(precision, reason)` that `model.precision=auto` means on this machine."""
    reason = native_bf16(flags)
    if reason is None:
        return "fp32", "no native bf16 on this machine"
    return "bf16", reason


# A sweep job of the tiny default peaks near 0.9 GB (the frontier sweep); 4 GiB a job leaves
# room for larger models and the sweeping process.
MEMORY_PER_JOB = 4 * 2**30


def sweep_jobs(env: dict[str, str], cpus: int, memory_bytes: int, cuda: bool) -> int:
    """Jobs a local sweep runs at once (hydra/launcher=local_parallel).

    One per core (each on one thread: on this 2-core machine the frontier sweep ran 1.78x the
    jobs per hour as 2 jobs x 1 thread than as 1 job x 2 threads, benchmarks/NOTES.md), at most
    one per MEMORY_PER_JOB; one on a CUDA machine, whose jobs would share the GPU.
    RLHF_EXP_SWEEP_JOBS overrides (the test suite sets 1: its own workers fill the cores).
    """
    if env.get("RLHF_EXP_SWEEP_JOBS"):
        return max(1, int(env["RLHF_EXP_SWEEP_JOBS"]))
    if cuda:
        return 1
    return max(1, min(cpus, memory_bytes // MEMORY_PER_JOB))


def local_sweep_jobs() -> int:
    """`sweep_jobs` for this machine and environment."""
    import torch

    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return sweep_jobs(dict(os.environ), os.cpu_count() or 1, memory, torch.cuda.is_available())
