"""Pickled weights load only with `model.allow_pickle_weights`, and never when they hold more
than tensors: one `UserError` naming the file, before anything is unpickled."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf_exp.config.model_files import unsafe_pickles
from rlhf_exp.config.schema import ModelSpec
from rlhf_exp.errors import UserError
from rlhf_exp.models.loading import load_causal_lm


def _pickled_copy(tiny_dir: Path, out: Path, payload: object = None) -> Path:
    """`tiny_dir` with its safetensors weights as `pytorch_model.bin` (plus `payload`)."""
    shutil.copytree(tiny_dir, out)
    weights = load_file(out / "model.safetensors")
    (out / "model.safetensors").unlink()
    if payload is not None:
        weights["payload"] = payload
    torch.save(weights, out / "pytorch_model.bin")
    return out


def test_benign_pickled_weights_need_the_opt_in(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = _pickled_copy(tiny_dir, tmp_path / "bin")
    with pytest.raises(UserError, match=r"refused .*pytorch_model.bin: .*allow_pickle_weights"):
        load_causal_lm(str(model_dir), ModelSpec())
    model = load_causal_lm(
        str(model_dir), dataclasses.replace(ModelSpec(), allow_pickle_weights=True)
    )
    assert model.num_parameters() > 0


def test_a_pickle_holding_code_is_refused_unloaded(tiny_dir: Path, tmp_path: Path) -> None:
    model_dir = _pickled_copy(tiny_dir, tmp_path / "evil", payload=print)  # a callable, not data
    spec = dataclasses.replace(ModelSpec(), allow_pickle_weights=True)
    with pytest.raises(UserError, match=r"refused .*pytorch_model.bin: it pickles builtins.print"):
        load_causal_lm(str(model_dir), spec)


def test_checkpoint_scan_allows_rng_numpy_but_not_training_args(tmp_path: Path) -> None:
    import numpy as np

    torch.save({"python": (3,), "numpy": np.random.get_state()}, tmp_path / "rng_state.pth")
    torch.save({"state": {}}, tmp_path / "optimizer.pt")
    torch.save({"x": print}, tmp_path / "training_args.bin")  # never loaded, never checked
    assert unsafe_pickles(tmp_path) is None
    (tmp_path / "scheduler.pt").write_bytes(b"not a torch file")
    path, why = unsafe_pickles(tmp_path)
    assert path.name == "scheduler.pt" and "not a torch zip checkpoint" in why
