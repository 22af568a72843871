"""Compare saved model dirs tensor by tensor (safetensors, no model construction)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import load_file


def load_weights(model_dir: Path | str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(model_dir) / "model.safetensors"))


def changed_tensors(before: dict, after: dict, prefix_after: str = "") -> set[str]:
    """Names (as in `before`) whose values differ in `after` (looked up as prefix_after+name)."""
    return {name for name, t in before.items() if not torch.equal(t, after[prefix_after + name])}


def lora_targets(names: Iterable[str], target_modules: list[str]) -> set[str]:
    """The weight matrices LoRA wraps (and merges back into on save) among `names`."""
    return {n for n in names if n.endswith(".weight") and n.split(".")[-2] in target_modules}
