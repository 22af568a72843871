"""DPO trainer wiring on a toy dataset and the session's one-layer tiny LM (seconds, no cache):
every loss type trains, and the reference is the starting policy without a second copy
where none is needed."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import peft
import pytest
import torch
from datasets import Dataset

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.dpo import LOSS_TYPES
from rlhf_exp.config.schema import validate
from rlhf_exp.context import RunContext
from rlhf_exp.methods.dpo import build_trainer
from rlhf_exp.tracking import Tracker

PAIRS = [
    {"prompt": f"the film number {i} was", "chosen": " fine and then it ended.", "rejected": " it."}
    for i in range(8)
]
# Per-loss label_smoothing where the schema requires or the loss reads it.
SMOOTHING = {"exo_pair": 1e-3, "robust": 0.1, "aot": 0.1}


def make_trainer(compose_cfg, tmp_path: Path, model, tok, *overrides: str, init: str = "-"):
    run = validate(
        compose_cfg(
            "method=dpo",
            "method.max_steps=2",
            "method.per_device_train_batch_size=4",
            "method.per_device_eval_batch_size=4",
            "method.learning_rate=1e-2",  # large: two steps must move the weights visibly
            "method.warmup_ratio=0",
            "method.lr_scheduler_type=constant",
            "method.logging_steps=1",
            *overrides,
        )
    )
    ctx = RunContext(run, tmp_path / "run", ArtifactCache(tmp_path / "cache"), Tracker(tmp_path))
    ctx.tracker.close()
    pairs = ctx.tokenize(Dataset.from_list(PAIRS), "preference", tok, "pairs").dataset
    return build_trainer(run, ctx, init, model, tok, pairs, pairs)


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(2B,) summed log-probs of the completion tokens of a collated [chosen; rejected] batch."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (2B, T-1, V)
    token = logps.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)  # (2B, T-1)
    return (token * batch["completion_mask"][:, 1:]).sum(1)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_trains_with_a_finite_loss(compose_cfg, tmp_path, tiny_lm, loss_type):
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    smoothing = SMOOTHING.get(loss_type, 0.0)
    trainer = make_trainer(
        compose_cfg,
        tmp_path,
        model,
        tok,
        f"method.loss_type={loss_type}",
        f"method.label_smoothing={smoothing}",
    )
    assert trainer.loss_types == [loss_type]
    result = trainer.train()
    assert trainer.state.global_step == 2
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(result.training_loss)
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed, f"{loss_type}: no parameter moved"


@pytest.mark.parametrize(
    ("lora", "precompute"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_reference_is_the_starting_policy(compose_cfg, tmp_path, tiny_lm, lora, precompute):
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    start = copy.deepcopy(model).eval()  # the SFT policy as it was before DPO
    overrides = [f"method.precompute_ref_log_probs={str(precompute).lower()}"]
    if lora:
        overrides.append("lora=default")
    if not lora and not precompute:
        # The frozen copy is loaded from the init dir; save the starting policy there.
        start.save_pretrained(tmp_path / "init")
        tok.save_pretrained(tmp_path / "init")
    trainer = make_trainer(
        compose_cfg, tmp_path, model, tok, *overrides, init=str(tmp_path / "init")
    )
    if lora or precompute:
        assert trainer.ref_model is None  # no second copy of the weights anywhere
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    expected = sequence_logps(start, batch)
    if precompute:  # TRL scored the pairs with the untouched policy before any step
        rows = [trainer.train_dataset[i] for i in range(4)]
        got = torch.tensor(
            [r["ref_chosen_logps"] for r in rows] + [r["ref_rejected_logps"] for r in rows]
        )
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    trainer.train()
    if lora:
        assert isinstance(trainer.model, peft.PeftModel)
        assert "ref" not in trainer.model.peft_config  # reference = adapters off, not a copy
        with trainer.model.disable_adapter():
            reference = sequence_logps(trainer.model, batch)
        torch.testing.assert_close(reference, expected, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(sequence_logps(trainer.model, batch), expected, atol=1e-3)
    elif not precompute:
        ref = trainer.ref_model
        assert ref is not None and ref is not trainer.model
        assert not any(p.requires_grad for p in ref.parameters())
        torch.testing.assert_close(sequence_logps(ref, batch), expected, rtol=1e-4, atol=1e-4)
