"""Models sharded across processes: FSDP2's `fully_shard` (rlhf_exp/accelerate_configs/
fsdp.yaml) or DeepSpeed ZeRO-3 (zero3.yaml). Each process holds a slice of every weight, and
reading a weight whole is a collective that every rank takes part in.

    save_merged(model, ...)            gathers (every rank calls it)
    with whole_weights(model):         every weight whole on every rank for the block:
        model.policy.generate(...)     submodules run alone, no collective per forward

Generation calls the policy many times outside the sharded root's forward, one token at a
time; gathering once per rollout instead of once per token is what TRL does for ZeRO-3
(`unwrap_model_for_generation`). Outside a sharded run every function here is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from rlhf_exp.distributed import is_main_process


def is_sharded(model: nn.Module) -> bool:
    """Whether `model`'s parameters are slices (FSDP's DTensors, or ZeRO-3 partitions not
    gathered at the moment) rather than whole tensors."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) or _zero3_partitioned(p) for p in model.parameters())


def _zero3_partitioned(param: Any) -> bool:
    if not hasattr(param, "ds_id"):
        return False
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return param.ds_status == ZeroParamStatus.NOT_AVAILABLE


def is_zero3(model: nn.Module) -> bool:
    """Whether DeepSpeed ZeRO-3 partitions `model`'s parameters (gathered or not)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


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


@contextlib.contextmanager
def loaded_whole() -> Iterator[None]:
    """Models loaded in the block are whole on every rank, even under ZeRO-3, whose
    transformers integration otherwise partitions each one as it loads (`zero.Init`). A
    partitioned model has no weights to copy, initialise, merge or run until a DeepSpeed
    engine wraps it, and the models loaded after a trainer starts (references, reward
    scorers for evaluation) have none; what trains is partitioned when it is prepared
    (`accelerator.prepare`, `deepspeed.initialize`). Costs the whole model in host memory per
    rank while loading, as data parallel does."""
    from transformers.integrations import deepspeed as hf_deepspeed

    if not hf_deepspeed.is_deepspeed_zero3_enabled():
        yield
        return
    # the object itself, whoever set it (accelerate's plugin, or TrainingArguments before a
    # trainer's accelerator exists); transformers keeps only a weak reference
    config = hf_deepspeed._hf_deepspeed_config_weak_ref()
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def _units(model: nn.Module | None) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [] if model is None else [m for m in model.modules() if isinstance(m, FSDPModule)]


def _reshards_after_forward(unit: Any) -> bool:
    # FSDP2 has no public getter; a unit reshards after forward iff it has a post-forward mesh
    groups = unit._get_fsdp_state()._fsdp_param_groups
    return any(group.post_forward_mesh_info is not None for group in groups)


@contextlib.contextmanager
def whole_weights(*models: nn.Module | None) -> Iterator[None]:
    """Every weight of `models` gathered once (a collective: every rank enters), kept whole
    through any number of forwards of any submodule, and sliced again on exit. Inside, the
    parameters are whole tensors: one rank alone may generate or evaluate.

    FSDP: pass the prepared modules; not `state_dict()` inside, as FSDP's state-dict hook
    slices them again (`save_merged` gathers by itself). A sharded model must have run one
    forward through its root before (FSDP picks its root module then); `PPOTrainer` does so
    when it prepares the model. ZeRO-3: pass the DeepSpeed engines (accelerate's prepared
    model, TRL's `prepare_deepspeed` reference), whose per-module gather hooks are lifted for
    the block, as TRL's `unwrap_model_for_generation` does.
    """
    present = [model for model in models if model is not None]
    with _zero3_whole(present), _fsdp_whole(present):
        yield


@contextlib.contextmanager
def _zero3_whole(models: list[nn.Module]) -> Iterator[None]:
    params = [p for model in models if is_zero3(model) for p in model.parameters()]
    if not params:
        yield
        return
    import deepspeed

    engines = [m for m in models if isinstance(m, deepspeed.DeepSpeedEngine)]
    with deepspeed.zero.GatheredParameters(params):
        lifted = [_lift_hooks(engine) for engine in engines]
        try:
            yield
        finally:
            for engine, start_hook in zip(engines, lifted, strict=True):
                _restore_hooks(engine, start_hook)


def _offload(engine: Any) -> Any:
    optimizer = engine.optimizer  # a training engine's ZeRO-3 optimizer, or the bare offload
    return getattr(optimizer, "parameter_offload", optimizer)


def _lift_hooks(engine: Any) -> Any:
    """Take ZeRO-3's hooks off `engine`'s module: TRL's `remove_hooks` (the per-module
    gather and release) and the start-of-forward hook it leaves on, whose step check is a
    collective (one rank alone evaluating would wait for the others forever). Returns that
    hook for `_restore_hooks`."""
    from trl.models.utils import remove_hooks

    remove_hooks(engine)
    offload = _offload(engine)
    return offload.module._forward_pre_hooks.pop(offload.fwd_pre_hook.id)


def _restore_hooks(engine: Any, start_hook: Any) -> None:
    from trl.models.utils import add_hooks

    offload = _offload(engine)
    offload.fwd_pre_hook = offload.module.register_forward_pre_hook(start_hook)
    add_hooks(engine)


@contextlib.contextmanager
def _fsdp_whole(models: list[nn.Module]) -> Iterator[None]:
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
