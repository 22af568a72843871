"""PPO checkpoints: everything a resumed run needs to continue as if never stopped.

    <run dir>/checkpoints/step-000040/
        policy.safetensors     trainable policy weights (LoRA: the adapters only)
        critic.safetensors     the critic (separate value model, or the value head)
        optimizer.pt           Adam state by parameter name (torch.load(..., weights_only=True)),
                               as torch's full optimizer state dict, whatever the backend
        state.pt               step, KL controller, LR scheduler, the step's metrics
        rng-rank{r}.pt         torch / python / numpy RNG of each process
        COMPLETE               written last: a directory without it is ignored

Resume with `resume_from=<that dir>` or `resume_from=latest` (the newest complete checkpoint
under this run's own checkpoints/, with the run's `hydra.run.dir`), as for every method.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from rlhf_exp.errors import ConfigError
from rlhf_exp.sharding import is_sharded, whole_weights
from rlhf_exp.training import CHECKPOINT_COMPLETE

log = logging.getLogger(__name__)

PARTS = ("policy.safetensors", "critic.safetensors")


def _split(module: nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Trainable tensors of a `PolicyAndValue`, split into the policy part and the rest."""
    state = {n: p.detach().contiguous() for n, p in module.named_parameters() if p.requires_grad}
    policy = {n: t for n, t in state.items() if n.startswith("policy.")}
    critic = {n: t for n, t in state.items() if n not in policy}
    return {"policy.safetensors": policy, "critic.safetensors": critic}


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


def save(
    ckpt_root: Path,
    step: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    accelerator: Any,
    keep: int,
) -> Path:
    """Write checkpoint `step` (every process writes its RNG; the main one the rest).

    Weights and optimiser state are whole tensors keyed by parameter name, whether the run
    was one process, data parallel or sharded (FSDP, DeepSpeed ZeRO; gathered here): a
    checkpoint resumes on any number of processes, under any of them.
    """
    out = Path(ckpt_root) / f"step-{step:06d}"
    main = accelerator.is_main_process
    # collective when sharded: every rank gathers, the main one keeps the whole tensors
    if _is_zero(optimizer):
        optim_state = _zero_optimizer_state(module, optimizer)
    else:
        options = StateDictOptions(full_state_dict=True, cpu_offload=is_sharded(module))
        optim_state = get_optimizer_state_dict(module, optimizer, options=options)
    with whole_weights(module):
        if main:
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            for name, tensors in _split(module).items():
                save_file(tensors, str(out / name))
            torch.save(optim_state, out / "optimizer.pt")
            torch.save({**state, "step": step}, out / "state.pt")
    del optim_state
    accelerator.wait_for_everyone()
    torch.save(rng_state(), out / f"rng-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if main:
        (out / CHECKPOINT_COMPLETE).write_text(f"{step}\n")
        for old in complete_checkpoints(ckpt_root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return out


def complete_checkpoints(ckpt_root: Path) -> list[Path]:
    """Finished checkpoint dirs under `ckpt_root`, oldest first."""
    if not Path(ckpt_root).is_dir():
        return []
    dirs = [p for p in Path(ckpt_root).glob("step-*") if (p / CHECKPOINT_COMPLETE).is_file()]
    return sorted(dirs, key=lambda p: int(p.name.split("-")[1]))


def resolve(resume_from: str, ckpt_root: Path) -> Path | None:
    """The checkpoint dir `resume_from` names (None: `latest`, and there is none yet, so the
    run starts from scratch, saying so); a path that is not a checkpoint is a `ConfigError`."""
    if resume_from == "latest":
        found = complete_checkpoints(ckpt_root)
        if not found:
            log.warning(
                "resume_from=latest: no complete checkpoint in %s yet; starting from scratch",
                ckpt_root,
            )
            return None
        return found[-1]
    path = Path(resume_from).expanduser()
    if not (path / CHECKPOINT_COMPLETE).is_file():
        raise ConfigError(
            "resume_from", resume_from, "not a complete PPO checkpoint dir (no COMPLETE marker)"
        )
    return path


def load_weights(path: Path, module: nn.Module) -> None:
    """Put the checkpoint's trainable weights into `module`, a `PolicyAndValue` not yet
    prepared: whatever shards or partitions it then (FSDP, ZeRO, whose fp32 master weights
    are made at that point) starts from them."""
    tensors: dict[str, torch.Tensor] = {}
    for name in PARTS:
        tensors.update(load_file(str(path / name)))
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ConfigError(
            "resume_from",
            str(path),
            f"weights do not match this run's model (missing {missing[:3]}, extra {extra[:3]})",
        )
    module.load_state_dict(tensors, strict=False)


def load(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Any
) -> dict[str, Any]:
    """Restore the optimiser and this process's RNG from `path` (the weights went in with
    `load_weights` before the model was prepared); returns `state.pt`. Every rank reads the
    whole tensors and keeps its own slice of them when sharded."""
    optim_state = torch.load(path / "optimizer.pt", weights_only=True)
    keys = list(optim_state.get("state", {}))
    if keys and not isinstance(keys[0], str):
        raise ConfigError(
            "resume_from",
            str(path),
            "its optimiser state is keyed by position (an rlhf-exp checkpoint from before "
            "2026-11-26); resume it with that version, or start a new run",
        )
    if _is_zero(optimizer):
        _set_zero_optimizer_state(module, optimizer, optim_state)
    else:
        whole = StateDictOptions(full_state_dict=True, strict=False)
        set_optimizer_state_dict(module, optimizer, optim_state, options=whole)
    rng_file = path / f"rng-rank{accelerator.process_index}.pt"
    if rng_file.is_file():  # a run resumed on more processes than it saved starts them fresh
        set_rng_state(torch.load(rng_file, weights_only=True))
    return torch.load(path / "state.pt", weights_only=True)


# DeepSpeed ZeRO keeps Adam's state in flat partitions of its own; its `safe_*_full_*`
# accessors read and write one parameter's whole state (collective under ZeRO-3), so the
# checkpoint has the same layout as torch's full optimizer state dict under DDP and FSDP.


def _is_zero(optimizer: Any) -> bool:
    return type(optimizer).__module__.startswith("deepspeed.")


def _trainable(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters() if p.requires_grad]


def _zero_optimizer_state(module: nn.Module, optimizer: Any) -> dict[str, Any]:
    from deepspeed.utils import safe_get_full_optimizer_state

    flat = next(iter(optimizer.optimizer.state.values()))  # every partition: the same step
    keys = [k for k, v in flat.items() if torch.is_tensor(v) and v.dim() > 0]
    state = {
        name: {"step": flat["step"].detach().clone().cpu()}
        | {k: safe_get_full_optimizer_state(param, k).detach().cpu() for k in keys}
        for name, param in _trainable(module)
    }
    names = [name for name, _ in _trainable(module)]
    group = optimizer.param_groups[0]  # PPOTrainer's one group (ZeRO-3 may split it)
    hyper = {k: v for k, v in group.items() if k != "params"}
    return {"state": state, "param_groups": [hyper | {"params": names}]}


def _set_zero_optimizer_state(module: nn.Module, optimizer: Any, saved: dict[str, Any]) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state, safe_set_local_optimizer_state

    # Adam's state appears at the first step; made here as torch's AdamW makes it, keyed by
    # ZeRO's fp32 partitions (stage 3 / stages 1-2), so the values below have somewhere to go
    first = next(iter(saved["state"].values()))
    stage3 = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    flats = stage3 if stage3 is not None else optimizer.single_partition_of_fp32_groups
    for flat in flats:
        state = optimizer.optimizer.state[flat]
        for key, value in first.items():
            if value.dim() > 0:
                state.setdefault(key, torch.zeros_like(flat))
        state["step"] = first["step"].clone().to(flat.device)
    if stage3 is None:  # stages 1-2 link each parameter to its slice of the state at step 1
        optimizer._lazy_init_hp_params_optimizer_state()
    for name, param in _trainable(module):
        for key, value in saved["state"].get(name, {}).items():
            if value.dim() == 0:
                continue
            if hasattr(param, "ds_id"):  # ZeRO-3: the full setter cannot slice padded tails
                safe_set_local_optimizer_state(param, _local_partition(param, value), key)
            else:
                safe_set_full_optimizer_state(param, value.to(param.device), key)
    hyper = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    for group in optimizer.param_groups:
        group.update({k: v for k, v in hyper.items() if k in group})


def _local_partition(param: Any, value: torch.Tensor) -> torch.Tensor:
    """This rank's slice of `value` as ZeRO-3 partitions `param`: equal slices of the
    flattened tensor, the last one padded."""
    import torch.distributed as dist

    group = param.ds_process_group
    size, rank = param.ds_tensor.numel(), dist.get_rank(group=group)
    flat = value.flatten().to(param.ds_tensor.device)
    flat = torch.nn.functional.pad(flat, (0, size * dist.get_world_size(group) - flat.numel()))
    return flat[rank * size : (rank + 1) * size]
