"""TRL's fused LM head on CPU scores only labelled positions, in row blocks, with TRL's results."""

from __future__ import annotations

from typing import Any

import pytest
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

    _trls_own(monkeypatch)
    every_position = _step(model, batch)
    lm_head.install_cpu_lm_head()
    compact = _step(model, batch)

    labelled = int((labels[:, 1:] != -100).sum())
    assert lm_head_rows == [3 * 19, labelled]
    for key in ("loss", "entropy", "log_probs"):
        torch.testing.assert_close(compact[key], every_position[key], rtol=1e-6, atol=1e-7)
    assert torch.equal(compact["is_top1"], every_position["is_top1"])
    assert compact["grads"].keys() == every_position["grads"].keys()
    for name, grad in every_position["grads"].items():
        torch.testing.assert_close(compact["grads"][name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_other_devices_keep_trls_choice_and_code(monkeypatch):
    _trls_own(monkeypatch)
    lm_head.install_cpu_lm_head()
    assert trl_utils._use_triton(torch.device("cpu"))
    meta = torch.device("meta")  # neither CPU nor a Triton device, as Neuron or MPS
    assert trl_utils._use_triton(meta) == lm_head._trl_use_triton(meta) is False
    called: list[str] = []
    monkeypatch.setattr(lm_head._trl_function, "apply", lambda *a: called.append("trl"))
    monkeypatch.setattr(lm_head.CpuFusedLogProbs, "apply", lambda *a: called.append("ours"))
    trl_utils._ChunkedLogProbFunction.apply(torch.empty(0, 4, device="meta"))
    trl_utils._ChunkedLogProbFunction.apply(torch.empty(0, 4))
    assert called == ["trl", "ours"]


def _trls_own(monkeypatch) -> None:
    """TRL's fused head as it ships, whatever an earlier test in this process installed."""
    monkeypatch.setattr(trl_utils, "_use_triton", lm_head._trl_use_triton)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", lm_head._trl_function)


ALL_OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def _head(function: Any, hidden, weight, bias, targets, grads, **kw) -> dict[str, Any]:
    """Every output of one fused-head call, and the gradients of a loss on log-probs and
    entropy weighted per token (`grads`), as SFT's and DPO's losses and an entropy bonus do."""
    hidden = hidden.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    bias = None if bias is None else bias.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=kw["bf16"]):
        out = function.apply(
            hidden,
            weight,
            bias,
            targets,
            kw["temperature"],
            32,
            kw["softcap"],
            kw["scale"],
            ALL_OUTPUTS,
        )
    logprobs, entropy = out[0], out[1]
    loss = (logprobs * grads[0]).sum()
    if grads[1] is not None:
        loss = loss + (entropy * grads[1]).sum()
    loss.backward()
    result = dict(zip(ALL_OUTPUTS, (x.detach() for x in out), strict=True))
    result |= {"d_hidden": hidden.grad, "d_weight": weight.grad}
    if bias is not None:
        result["d_bias"] = bias.grad
    return result


def _reference(hidden, weight, bias, targets, grads, **kw) -> dict[str, Any]:
    """The same loss's gradients in float64 autograd, through the plain formula."""
    leaves = {"d_hidden": hidden, "d_weight": weight}
    if bias is not None:
        leaves["d_bias"] = bias
    leaves = {name: x.double().requires_grad_() for name, x in leaves.items()}
    z = leaves["d_hidden"] @ leaves["d_weight"].t()
    if bias is not None:
        z = z + leaves["d_bias"]
    z = z * kw["scale"]
    if kw["softcap"] is not None:
        z = kw["softcap"] * torch.tanh(z / kw["softcap"])
    log_p = torch.log_softmax(z / kw["temperature"], dim=-1)
    loss = (log_p.gather(1, targets.unsqueeze(1)).squeeze(1) * grads[0]).sum()
    if grads[1] is not None:
        loss = loss - ((log_p.exp() * log_p).sum(-1) * grads[1]).sum()
    loss.backward()
    return {name: leaf.grad for name, leaf in leaves.items()}


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    "transform",
    [
        {"temperature": 1.0, "softcap": None, "scale": 1.0},
        {"temperature": 0.7, "softcap": 30.0, "scale": 0.5},  # Gemma's softcap, a logit scale
    ],
    ids=["plain", "softcap"],
)
@pytest.mark.parametrize("entropy_grad", [False, True], ids=["logprob-grad", "entropy-grad"])
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_cpu_function_matches_trls(monkeypatch, bf16, transform, entropy_grad, with_bias):
    """Row blocks of 3 over 10 tokens (the last one short), a vocabulary of 100 scored by TRL in
    tiles of 32; ties at the maximum, so `is_top1` must take the first of them. In fp32 the
    gradients are also float64 autograd's."""
    monkeypatch.setattr(lm_head, "BLOCK_ELEMENTS", 300)
    torch.manual_seed(0)
    hidden, weight = torch.randn(10, 16), torch.randn(100, 16) * 0.5
    weight[40] = weight[7]  # token 7's logit ties with a later one
    weight[9] = weight[70]  # and token 70's with an earlier one
    bias = torch.randn(100) * 0.1 if with_bias else None
    if with_bias:
        bias[40], bias[9] = bias[7], bias[70]
    hidden[2], hidden[5] = weight[7] * 8, weight[70] * 8  # where those ties are the maximum
    targets = torch.randint(0, 100, (10,))
    targets[2], targets[3], targets[5] = 7, 40, 70
    grads = (torch.rand(10), torch.rand(10) if entropy_grad else None)
    inputs = (hidden, weight, bias, targets, grads)
    trls = _head(lm_head._trl_function, *inputs, bf16=bf16, **transform)
    ours = _head(lm_head.CpuFusedLogProbs, *inputs, bf16=bf16, **transform)
    assert trls.keys() == ours.keys()
    assert torch.equal(ours["is_top1"], trls["is_top1"])
    assert ours["is_top1"][2] and not ours["is_top1"][5]  # the first maximum, not a later tie
    for key in ALL_OUTPUTS[:-1]:
        torch.testing.assert_close(ours[key], trls[key], rtol=1e-5, atol=1e-5, msg=key)
    if bf16:
        # a logit is rounded to 1/256 of its size, a gradient built from it no closer
        for key in (k for k in ours if k.startswith("d_")):
            scale = trls[key].abs().max()
            torch.testing.assert_close(ours[key], trls[key], rtol=1e-2, atol=1e-2 * scale)
        return
    exact = _reference(*inputs, **transform)
    for key, grad in exact.items():
        torch.testing.assert_close(ours[key], trls[key], rtol=1e-5, atol=1e-5, msg=key)
        torch.testing.assert_close(ours[key].double(), grad, rtol=1e-4, atol=1e-5, msg=key)


def test_cpu_function_on_no_labelled_position_gives_a_zero_gradient():
    """An all-masked micro-batch: nothing to score, the step still differentiates."""
    weight = torch.randn(50, 8, requires_grad=True)
    out = lm_head.CpuFusedLogProbs.apply(
        torch.zeros(0, 8),
        weight,
        None,
        torch.zeros(0, dtype=torch.long),
        1.0,
        32,
        None,
        1.0,
        ("log_probs", "entropy"),
    )
    assert out[0].shape == out[1].shape == (0,)
    out[0].sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
