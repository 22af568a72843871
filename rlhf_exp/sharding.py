"""Models sharded across processes (FSDP2's `fully_shard`, as `accelerate launch` with
rlhf_exp/accelerate_configs/fsdp.yaml applies it): each process holds a slice of every
weight, and reading a weight whole is a collective that every rank takes part in.

    save_merged(model, ...)            gathers with `gather_whole` (every rank calls it)
    with whole_weights(model):         every weight whole on every rank for the block:
        model.policy.generate(...)     submodules run alone, no collective per forward

Generation calls the policy many times outside the FSDP root's forward, one token at a time;
gathering once per rollout instead of once per token is what TRL does for ZeRO-3
(`unwrap_model_for_generation`). Outside a sharded run every function here is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from rlhf_exp.distributed import is_main_process


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are slices (DTensors) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_whole(state: dict[str, Any]) -> dict[str, Any]:
    """`state` (a `state_dict(keep_vars=True)`, so tied weights are one object) with every
    slice made whole, on the CPU, for the main process to write; the others get {}.
    Collective: every rank calls it with the same keys in the same order."""
    from torch.distributed.tensor import DTensor

    whole: dict[str, Any] = {}
    gathered: dict[int, Any] = {}  # by object: a tied weight is gathered (and saved) once
    main = is_main_process()
    for key, value in state.items():
        if id(value) not in gathered:
            full = value.full_tensor() if isinstance(value, DTensor) else value
            # one all-gather per tensor: only the main process keeps what it gathered
            gathered[id(value)] = full.detach().cpu() if main else None
        if main:
            whole[key] = gathered[id(value)]
    return whole


def _units(model: nn.Module | None) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [] if model is None else [m for m in model.modules() if isinstance(m, FSDPModule)]


def _reshards_after_forward(unit: Any) -> bool:
    # FSDP2 has no public getter; a unit reshards after forward iff it has a post-forward mesh
    groups = unit._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)


@contextlib.contextmanager
def whole_weights(*models: nn.Module | None) -> Iterator[None]:
    """Every FSDP unit of `models` gathered once (a collective: every rank enters), kept whole
    through any number of forwards of any submodule, and sliced again on exit. Inside, the
    parameters are plain tensors: one rank alone may generate or evaluate. Not `state_dict()`:
    FSDP's state-dict hook slices them again (`save_merged` gathers by itself).

    A sharded model must have run one forward through its root before (FSDP picks its root
    module then); `PPOTrainer` does so when it prepares the model.
    """
    units = [unit for model in models for unit in _units(model)]
    resharding = [unit for unit in units if _reshards_after_forward(unit)]
    for unit in units:
        unit.unshard()
    for unit in resharding:
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in resharding:
            unit.set_reshard_after_forward(True, recurse=False)
        for unit in units:
            unit.reshard()
