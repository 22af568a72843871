"""TRL's fused LM head on CPU scores only labelled positions, with the same results."""

from __future__ import annotations

from typing import Any

import torch
import trl.trainer.utils as trl_utils
from transformers import GPT2Config, GPT2LMHeadModel
from trl.trainer.utils import add_fused_lm_head

from rlhf_exp import lm_head

OUTPUTS = ("log_probs", "entropy", "is_top1")


def _step(model: GPT2LMHeadModel, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Loss, per-token outputs and every parameter's gradient of one fused-head step."""
    model.zero_grad()
    out = model(**batch, fused_lm_head=True)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return {
        "loss": out.loss.detach(),
        "entropy": out.entropy.detach(),
        "is_top1": out.is_top1,
        "log_probs": out.log_probs.detach(),
        "grads": grads,
    }


def test_cpu_scores_only_labelled_positions_with_the_same_loss_and_gradients(
    monkeypatch, lm_head_rows
):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=300))
    model.eval()  # no dropout: both paths must see the same function
    add_fused_lm_head(model, outputs=OUTPUTS)
    ids = torch.randint(0, 300, (3, 20))
    attention = torch.ones_like(ids)
    attention[0, :6] = 0  # left padding
    labels = ids.masked_fill(attention == 0, -100)
    labels[:, :12] = -100  # a long prompt, a short reply: 8 labelled positions per row
    batch = {"input_ids": ids, "attention_mask": attention, "labels": labels}

    monkeypatch.setattr(trl_utils, "_use_triton", lm_head._trl_use_triton)
    every_position = _step(model, batch)
    lm_head.score_labelled_positions_only()
    compact = _step(model, batch)

    labelled = int((labels[:, 1:] != -100).sum())
    assert lm_head_rows == [3 * 19, labelled]
    for key in ("loss", "entropy", "log_probs"):
        torch.testing.assert_close(compact[key], every_position[key], rtol=1e-6, atol=1e-7)
    assert torch.equal(compact["is_top1"], every_position["is_top1"])
    assert compact["grads"].keys() == every_position["grads"].keys()
    for name, grad in every_position["grads"].items():
        torch.testing.assert_close(compact["grads"][name], grad, rtol=1e-5, atol=1e-8, msg=name)


def test_other_devices_keep_trls_choice(monkeypatch):
    monkeypatch.setattr(trl_utils, "_use_triton", lm_head._trl_use_triton)
    lm_head.score_labelled_positions_only()
    assert trl_utils._use_triton(torch.device("cpu"))
    meta = torch.device("meta")  # neither CPU nor a Triton device, as Neuron or MPS
    assert trl_utils._use_triton(meta) == lm_head._trl_use_triton(meta) is False
