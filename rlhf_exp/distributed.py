"""Which process writes: under `accelerate launch` / `torchrun` every process runs the same
run, and only rank 0 writes the run's files (config, metrics, TensorBoard, final model)."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Rank 0 of a launched process group, or a plain single process (no RANK set)."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """Processes in the launched group (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def distributed_type() -> str:
    """accelerate's distributed type for this run: `NO` (one process), `MULTI_CPU`,
    `MULTI_GPU` (data parallel), `FSDP` or `DEEPSPEED`. On CPUs accelerate runs an FSDP
    config data parallel, and says so only here."""
    from accelerate.state import AcceleratorState, is_initialized

    return AcceleratorState().distributed_type.value if is_initialized() else "NO"


def any_process(flag: bool) -> bool:
    """`flag` OR-ed over the launched group: every rank gets the same answer, so a signal that
    reached one rank stops them all at the same step (collective: every rank must call it)."""
    if world_size() <= 1:
        return flag
    import torch
    import torch.distributed as dist

    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    value = torch.tensor([float(flag)], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)
