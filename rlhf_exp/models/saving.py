"""Save a trained model as a plain checkpoint (safetensors + tokenizer) that `from_pretrained`
reloads, with its LoRA adapters merged in.

A merged weight (base + adapter delta) is a new tensor the size of the base weight, so merging
every adapted layer at once holds a second copy of most of the model at save time: 340 MB at
124M, ~13 GB for a 7B model, on whatever device holds the model. Instead transformers writes the
base model's shards from the tensors themselves (no copies), then each adapted weight is merged
and written over its base weight's bytes in the shard: one merged weight in memory at a time.

The checkpoint is built in a hidden sibling directory and renamed into place at the end, so an
interrupted save leaves the previous model (or none), never a half-merged one.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import peft
import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from rlhf_exp import signals
from rlhf_exp.distributed import is_main_process
from rlhf_exp.memory import release_freed_memory
from rlhf_exp.sharding import gather_whole, is_sharded, is_zero3, whole_weights

log = logging.getLogger(__name__)

# transformers 5 always writes safetensors (0.8 writes from the tensors, without a copy) and the
# merge writes one weight at a time in place, so the shard size no longer bounds what a save
# holds; checkpoints keep the 200 MB shards they have always had
SAVE_SHARD = "200MB"

# state-dict key -> a function building that key's merged weight
Merges = dict[str, Callable[[], torch.Tensor]]


@signals.phase("saving", deferred=True)  # a signal never cuts a save half-way
def save_merged(model: Any, tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """Save a plain checkpoint (safetensors + tokenizer) that `from_pretrained` reloads.

    LoRA adapters are merged into what is written, so `model` keeps its adapters (a run saves
    before its final evaluation, which may still switch them off for the reference). Only rank
    0 writes. A model sharded across processes is gathered first, which every rank takes part
    in: FSDP one tensor at a time, DeepSpeed ZeRO-3 whole for the save (its partitions cannot
    be added to, as merging LoRA needs).
    """
    if is_zero3(model):
        with whole_weights(model):
            if is_main_process():
                _save_whole(model, tokenizer, Path(out_dir), sliced=False)
        return
    sliced = is_sharded(model)
    if sliced or is_main_process():
        _save_whole(model, tokenizer, Path(out_dir), sliced=sliced)


def _save_whole(
    model: Any, tokenizer: PreTrainedTokenizerBase, out_dir: Path, *, sliced: bool
) -> None:
    """`sliced` (FSDP): every rank calls this and gathers; only rank 0 writes."""
    release_freed_memory()  # the shard buffers start from what is in use
    lora = isinstance(model, peft.PeftModel)
    plain = model.get_base_model() if lora else model
    merges: Merges = {}
    if sliced:  # the gathered model is whole on rank 0 anyway: merge as it is gathered
        state = merged_state_dict(model, keep_vars=True) if lora else None
        state_dict = gather_whole(state or plain.state_dict(keep_vars=True))
        if not is_main_process():
            return
    elif lora:
        state_dict, merges = base_weights_and_merges(model)
    else:
        state_dict = None
    building = out_dir.with_name(f".{out_dir.name}.saving")
    _write(plain, tokenizer, building, state_dict)
    del state_dict
    unwritten = merge_into_shards(building, merges)
    if unwritten:
        # transformers did not write these under their own names (tied to another weight, or
        # renamed to the checkpoint format of a model whose weights it converts on loading), or
        # wrote them in another dtype or shape
        log.warning(
            "saving: %s's checkpoint does not hold %r as the model has it (tied, renamed or "
            "converted on saving): merging its %d adapted weights in memory instead, which "
            "holds a copy of them while saving",
            type(plain).__name__, unwritten[0], len(merges),
        )  # fmt: skip
        _write(plain, tokenizer, building, merged_state_dict(model))
    _replace_dir(building, out_dir)
    release_freed_memory()


def _write(
    plain: Any, tokenizer: PreTrainedTokenizerBase, directory: Path, state_dict: Any
) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    plain.save_pretrained(directory, state_dict=state_dict, max_shard_size=SAVE_SHARD)
    tokenizer.save_pretrained(directory)


def _replace_dir(built: Path, out_dir: Path) -> None:
    """Move `built` to `out_dir`, replacing what was there; the old one goes only once the new
    one is in place."""
    old = out_dir.with_name(f".{out_dir.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        out_dir.rename(old)
    built.rename(out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _lora_parts(model: peft.PeftModel) -> tuple[dict[str, torch.Tensor], Merges, list[str]]:
    """The adapted modules' entries of the plain model's state dict, unmerged, the merges of
    their weights, and the module prefixes they replace."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    adapter = model.active_adapter
    entries: dict[str, torch.Tensor] = {}
    merges: Merges = {}
    replaced: list[str] = []
    for name, module in model.get_base_model().named_modules():
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            entries[f"{name}.weight"] = layer.weight
            merges[f"{name}.weight"] = _merge_of(layer, module, adapter)
            if getattr(layer, "bias", None) is not None:
                entries[f"{name}.bias"] = layer.bias
        elif isinstance(module, ModulesToSaveWrapper):  # the trained head, as saved
            for key, value in module.modules_to_save[adapter].state_dict().items():
                entries[f"{name}.{key}"] = value
        else:
            continue
        replaced.append(f"{name}.")
    return entries, merges, replaced


def _merge_of(layer: torch.nn.Module, module: Any, adapter: str) -> Callable[[], torch.Tensor]:
    def merged() -> torch.Tensor:
        with torch.no_grad():  # in the base weight's dtype, as peft's in-place merge leaves it
            return (layer.weight + module.get_delta_weight(adapter)).to(layer.weight.dtype)

    return merged


def _with_rest(
    model: peft.PeftModel, entries: dict[str, torch.Tensor], replaced: list[str], keep_vars: bool
) -> dict[str, torch.Tensor]:
    for key, value in model.get_base_model().state_dict(keep_vars=keep_vars).items():
        if not key.startswith(tuple(replaced)):
            entries[key] = value
    return entries


def base_weights_and_merges(model: peft.PeftModel) -> tuple[dict[str, torch.Tensor], Merges]:
    """The plain model's state dict with the adapted weights unmerged (the model's own tensors:
    no copies), and how to build each adapted weight merged."""
    entries, merges, replaced = _lora_parts(model)
    return _with_rest(model, entries, replaced, keep_vars=False), merges


def merged_state_dict(model: peft.PeftModel, keep_vars: bool = False) -> dict[str, torch.Tensor]:
    """The plain model's weights with the LoRA deltas added, as `merge_and_unload` of a copy
    would give (bit for bit), without copying the model: only the adapted weights are new
    tensors, all of them at once. `keep_vars`: the parameters themselves, as
    `state_dict(keep_vars=True)` gives them."""
    entries, merges, replaced = _lora_parts(model)
    entries.update({key: merge() for key, merge in merges.items()})
    return _with_rest(model, entries, replaced, keep_vars=keep_vars)


def merge_into_shards(directory: Path, merges: Merges) -> list[str]:
    """Write each weight of `merges`, merged, over its unmerged bytes in the safetensors shards
    in `directory`, one weight in memory at a time. Returns [] when all are written; else the
    keys no shard holds, or the first key a shard holds in another dtype or shape (then the
    caller writes the whole checkpoint another way)."""
    if not merges:
        return []
    index = directory / SAFE_WEIGHTS_INDEX_NAME
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
    else:
        weight_map = dict.fromkeys(_tensor_entries(directory / SAFE_WEIGHTS_NAME)[1],
                                   SAFE_WEIGHTS_NAME)  # fmt: skip
    unwritten = [key for key in merges if key not in weight_map]
    if unwritten:
        return unwritten
    by_file: dict[str, list[str]] = defaultdict(list)
    for key in merges:
        by_file[weight_map[key]].append(key)
    for file, keys in by_file.items():
        path = directory / file
        data_start, entries = _tensor_entries(path)
        # a merged weight has its base weight's dtype and shape, so its bytes fit exactly where
        # the base weight's are: no shard is read into memory or built again (safetensors can
        # only write whole files)
        with path.open("r+b") as shard:
            for key in keys:
                merged = merges[key]().to("cpu").contiguous()
                entry = entries[key]
                begin, end = entry["data_offsets"]
                if (_SAFETENSORS_DTYPES.get(merged.dtype) != entry["dtype"]
                        or list(merged.shape) != entry["shape"]
                        or end - begin != merged.numel() * merged.element_size()):  # fmt: skip
                    return [key]  # the caller writes the whole checkpoint another way
                shard.seek(data_start + begin)
                shard.write(merged.view(torch.uint8).numpy().data)
                del merged
    return []


_SAFETENSORS_DTYPES = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
}  # fmt: skip


def _tensor_entries(path: Path) -> tuple[int, dict[str, Any]]:
    """A safetensors file's header: where its data starts, and each tensor's dtype, shape and
    byte offsets within the data (the format's fixed layout: a little-endian u64 header size,
    then the header as JSON)."""
    with path.open("rb") as file:
        (size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(size))
    header.pop("__metadata__", None)
    return 8 + size, header
