"""PPO checkpoints: everything a resumed run needs to continue as if never stopped.

    <run dir>/checkpoints/step-000040/
        policy.safetensors     trainable policy weights (LoRA: the adapters only)
        critic.safetensors     the critic (separate value model, or the value head)
        optimizer.pt           Adam state by parameter name (torch.load(..., weights_only=True))
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
    set_model_state_dict,
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
    was one process, data parallel or sharded (FSDP, gathered here): a checkpoint resumes on
    any number of processes.
    """
    out = Path(ckpt_root) / f"step-{step:06d}"
    main = accelerator.is_main_process
    sharded = is_sharded(module)
    # collective under FSDP: every rank gathers, the main one keeps the whole tensors
    optim_state = get_optimizer_state_dict(
        module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=sharded)
    )
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


def load(
    path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, accelerator: Any
) -> dict[str, Any]:
    """Restore weights, optimiser and this process's RNG from `path`; returns `state.pt`.
    Every rank reads the whole tensors and keeps its own slice of them under FSDP."""
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
    whole = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(module, tensors, options=whole)
    optim_state = torch.load(path / "optimizer.pt", weights_only=True)
    keys = list(optim_state.get("state", {}))
    if keys and not isinstance(keys[0], str):
        raise ConfigError(
            "resume_from",
            str(path),
            "its optimiser state is keyed by position (an rlhf-exp checkpoint from before "
            "2026-11-26); resume it with that version, or start a new run",
        )
    set_optimizer_state_dict(module, optimizer, optim_state, options=whole)
    rng_file = path / f"rng-rank{accelerator.process_index}.pt"
    if rng_file.is_file():  # a run resumed on more processes than it saved starts them fresh
        set_rng_state(torch.load(rng_file, weights_only=True))
    return torch.load(path / "state.pt", weights_only=True)
