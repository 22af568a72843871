"""Numerical faults: a NaN injected into the loss stops the run at that step, naming the step
and the quantity, and the newest checkpoint on disk is one from before it, with finite
weights. (`run_method` runs in `tmp_path / "run"`.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trl import SFTTrainer

from rlhf_exp.errors import NonFiniteError
from rlhf_exp.methods.ppo import checkpoint, core
from rlhf_exp.training import latest_checkpoint


def _all_finite(weights: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(weights)).values())


@pytest.mark.slow
def test_nan_loss_stops_a_trainer_run_before_its_update(run_method, monkeypatch, tmp_path):
    original = SFTTrainer.compute_loss

    def poisoned(self, *args, **kwargs):
        loss = original(self, *args, **kwargs)
        return loss * float("nan") if self.state.global_step >= 6 else loss

    monkeypatch.setattr(SFTTrainer, "compute_loss", poisoned)
    # steps 1-6 are clean; the loss of step 7 is NaN, and so are its gradients
    with pytest.raises(NonFiniteError, match="train/loss gradient is not finite at step 7"):
        run_method("method=sft", "method.max_steps=20", "method.save_steps=4")
    kept = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert kept is not None and kept.name == "checkpoint-4"
    assert _all_finite(kept / "model.safetensors")


@pytest.mark.slow
def test_nan_loss_stops_ppo_and_keeps_the_checkpoint_before_it(run_method, monkeypatch, tmp_path):
    original = core.policy_loss
    calls = {"n": 0}
    per_iteration = 4 * 2  # ppo_epochs x micro-batches of 16 in a rollout of 32

    def poisoned(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan"), stats) if calls["n"] > 2 * per_iteration else (loss, stats)

    monkeypatch.setattr(core, "policy_loss", poisoned)
    with pytest.raises(NonFiniteError, match="train/loss is nan at step 3"):
        run_method(
            "method=ppo",
            "method.max_steps=6",
            "method.save_steps=2",
            "method.rollout_batch_size=32",
            "method.per_device_train_batch_size=16",
        )
    kept = checkpoint.complete_checkpoints(tmp_path / "run" / "checkpoints")
    assert [p.name for p in kept] == ["step-000002"]  # step 3 was never saved
    assert _all_finite(kept[-1] / "policy.safetensors")
