"""What a model or checkpoint dir holds, and whether its pickle files may be loaded.

Weights load from safetensors, which hold only tensors. A pickle file (`pytorch_model.bin`,
`optimizer.pt`) can hold any object, and unpickling one can run code. So, before anything
loads (`schema.check_paths`, and again in `models.loading` for direct callers):

- a model dir whose weights are pickles only (`pytorch_model*.bin`, no `*.safetensors`) is
  refused unless `model.allow_pickle_weights=true`;
- a pickle file that would be loaded (model weights with that opt-in, a checkpoint's
  optimizer, scheduler and RNG state) is disassembled, not run, and refused when it names
  anything beyond tensors and the numpy arrays of an RNG state: what `torch.load(...,
  weights_only=True)` would also refuse, but as one line naming the file.

`training_args.bin`, which transformers' Trainer writes into checkpoints for the record, is
never loaded here, so it is not checked. Standard library only; torch is imported to scan.

    python -c "from rlhf_exp.config.model_files import unsafe_pickles; \
print(unsafe_pickles('outputs/cache'))"
"""

from __future__ import annotations

import re
from pathlib import Path

# Written into a checkpoint dir (trainer `checkpoint-N`, PPO `step-N`) once it is saved whole:
# a checkpoint without it was cut short (SIGKILL mid-save) and is never resumed from.
CHECKPOINT_COMPLETE = "COMPLETE"
# Pickle files transformers' Trainer writes beside a checkpoint and never loads.
NOT_LOADED = {"training_args.bin"}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
PICKLED_WEIGHTS = re.compile(r"pytorch_model(-\d+-of-\d+)?\.bin")
# What transformers allowlists to load an RNG state with weights_only=True (numpy's arrays).
SAFE_NUMPY = re.compile(
    r"numpy\.(core|_core)\.multiarray\._reconstruct|numpy\.(ndarray|dtype)|numpy\.dtypes\.\w+DType"
)


def kind(path: Path) -> str:
    """What is at `path`, as an error message says it: 'does not exist', 'is a file', ..."""
    if path.is_symlink() and not path.exists():
        return "is a broken symlink"
    if not path.exists():
        return "does not exist"
    if path.is_dir():
        return "is a directory"
    if path.is_file():
        return "is a file"
    devices = (("is_char_device", "a character device"), ("is_block_device", "a block device"))
    for test, name in devices:
        if getattr(path, test)():
            return f"is {name}, not a regular file or directory"
    return "is a pipe or socket, not a regular file or directory"


def pickled_weights(directory: Path) -> list[Path]:
    """`pytorch_model*.bin` weight files of a model dir that has no safetensors weights."""
    if any(directory.glob("*.safetensors")):
        return []  # transformers loads these and ignores the .bin
    return sorted(p for p in directory.iterdir() if PICKLED_WEIGHTS.fullmatch(p.name))


def loaded_pickles(directory: Path) -> list[Path]:
    """Pickle files in `directory` (not below it) that loading it may unpickle."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES and p.name not in NOT_LOADED
    )


def unsafe_pickles(directory: str | Path) -> tuple[Path, str] | None:
    """The first file of `loaded_pickles(directory)` that holds more than tensors, and why.

    Reads the pickle's opcodes without running it (`torch.serialization`'s static scan), so
    a hostile file is named, never executed. Files not in torch's zip format (legacy saves,
    plain pickles) cannot be scanned that way and are refused as such.
    """
    files = loaded_pickles(Path(directory))
    if not files:
        return None
    from torch.serialization import get_unsafe_globals_in_checkpoint

    for path in files:
        try:
            found = get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not torch's zip format: a plain or legacy pickle, or not one at all
            return path, "it is not a torch zip checkpoint, so it cannot be checked unloaded"
        unsafe = [name for name in found if not SAFE_NUMPY.fullmatch(name)]
        if unsafe:
            shown = ", ".join(unsafe[:3]) + (", ..." if len(unsafe) > 3 else "")
            return path, f"it pickles {shown}, not just tensors, and loading it could run code"
    return None
