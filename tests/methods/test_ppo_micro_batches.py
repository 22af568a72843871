"""PPO's forwards on rows sorted by prompt length and cut of their shared padding, and its
minibatches split into micro-batches within `method.train_batch_tokens`: the same gradients
as one whole minibatch."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from rlhf_exp.config.ppo import PPOSpec
from rlhf_exp.methods.ppo import build_accelerator
from rlhf_exp.methods.ppo.models import PolicyAndValue, Reference, hidden_size
from rlhf_exp.methods.ppo.rollout import Batch, longest_row
from rlhf_exp.methods.ppo.trainer import PPOTrainer
from rlhf_exp.rl import by_length, by_rows, response_logprobs

PROMPT_TOKENS = [5, 2, 8, 3, 7, 1, 6, 4]  # real prompt tokens per row, left-padded to 8
RESPONSE_TOKENS = [4, 1, 3, 2, 4, 4, 1, 2]  # up to and including EOS, right-padded to 4
P, R = 8, 4


def left_padded_mask(prompt_tokens: list[int], response_tokens: list[int]) -> torch.Tensor:
    mask = torch.zeros(len(prompt_tokens), P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_tokens, response_tokens, strict=True)):
        mask[i, P - p : P + r] = 1
    return mask


def test_by_length_sorts_rows_and_cuts_their_shared_padding():
    mask = left_padded_mask(PROMPT_TOKENS[:4], RESPONSE_TOKENS[:4])
    chunks = by_length(mask, R, rows=2)
    # shortest prompts first (2, 3 tokens: 5 columns of padding in both), then 5 and 8
    assert [(idx.tolist(), first) for idx, first in chunks] == [([1, 3], 5), ([0, 2], 0)]
    assert [idx.tolist() for idx, _ in by_length(mask, R, rows=3)] == [[1, 3, 0], [2]]


def test_by_rows_returns_every_row_in_its_own_place():
    mask = left_padded_mask(PROMPT_TOKENS, RESPONSE_TOKENS)
    ids = torch.arange(mask.numel()).reshape(mask.shape) * mask
    widths = []

    def forward(rows, chunk_ids, chunk_mask):
        widths.append(chunk_ids.shape[1])
        return chunk_ids.sum(1), rows.float()

    sums, rows = by_rows(forward, ids, mask, R, rows=3)
    assert torch.equal(sums, ids.sum(1))  # cutting dropped padding only
    assert torch.equal(rows, torch.arange(len(mask)).float())
    # prompts of 1-3, 4-6 and 7-8 tokens: each chunk as wide as its longest
    assert widths == [3 + R, 6 + R, 8 + R]


def _batch(model, pad_id: int) -> Batch:
    torch.manual_seed(0)
    mask = left_padded_mask(PROMPT_TOKENS, RESPONSE_TOKENS)
    ids = torch.randint(3, 250, mask.shape).masked_fill(mask == 0, pad_id)
    response_ids, response_mask = ids[:, P:], mask[:, P:].float()
    with torch.no_grad():
        logits, _ = model(ids, mask, R)
        logprobs = response_logprobs(logits, response_ids, 1.0, pad_id)
    noise = lambda: torch.randn(len(ids), R) * response_mask  # noqa: E731
    return Batch(
        input_ids=ids,
        attention_mask=mask,
        response_ids=response_ids,
        mask=response_mask,
        logprobs=logprobs + 0.3 * noise(),  # some ratios beyond the clip range
        ref_logprobs=logprobs,
        values=noise(),
        advantages=noise(),
        returns=noise(),
    )


def _update(tiny_lm, tmp_path, train_batch_tokens: int | None):
    """One minibatch, one epoch: the gradients the optimiser steps with (one per step the heap
    heard of), the forwards' shapes and the update's stats."""
    base, tok = tiny_lm
    policy = copy.deepcopy(base)
    model = PolicyAndValue(policy, None, hidden_size(policy)).eval()
    torch.manual_seed(0)
    with torch.no_grad():  # a value head that answers (it starts at zero)
        model.value_head.weight.normal_(0, 0.1)
    prompts = [tok.decode(range(10, 10 + n)) for n in PROMPT_TOKENS]
    spec = PPOSpec(rollout_batch_size=8, per_device_train_batch_size=8, ppo_epochs=1)
    longest = longest_row(tok, prompts, spec, policy)
    spec.train_batch_tokens = train_batch_tokens or 8 * longest
    trainer = PPOTrainer(
        spec,
        build_accelerator(spec, "fp32"),
        model,
        Reference(policy, lora=False),
        tok,
        lambda prompts, texts: [0.0] * len(texts),
        prompts,
        seed=0,
        total_steps=1,
        checkpoint_dir=tmp_path,
    )
    grads, widths = [], []
    trainer.optimizer.optimizer.register_step_pre_hook(
        lambda *_: grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    )
    batch = _batch(model, tok.pad_token_id)
    hook = policy.register_forward_pre_hook(
        lambda module, args, kwargs: widths.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    heard = []
    stats = trainer.update(batch, SimpleNamespace(step_done=lambda: heard.append(len(grads))))
    hook.remove()
    assert heard == list(range(1, len(grads) + 1))  # told after each optimiser step, once
    return grads, widths, stats, trainer.micro_rows


def test_micro_batches_step_with_the_whole_minibatchs_gradient(tiny_lm, tmp_path):
    whole, whole_shapes, whole_stats, whole_rows = _update(tiny_lm, tmp_path / "a", None)
    # one forward, one step; the policy sees every token but the last (it predicts nothing)
    assert whole_rows == 8 and whole_shapes == [(8, P + R - 1)]
    split, shapes, stats, rows = _update(tiny_lm, tmp_path / "b", 1)
    assert rows == 1  # a token budget below one row: a row per micro-batch
    assert len(whole) == len(split) == 1  # one optimiser step either way
    # shortest prompt first, each row cut to its own tokens
    assert shapes == [(1, n + R - 1) for n in sorted(PROMPT_TOKENS)]
    for name, grad in whole[0].items():
        assert torch.allclose(split[0][name], grad, rtol=1e-4, atol=1e-7), name
    for key in ("policy/pg_loss", "val/vf_loss", "policy/clipfrac", "policy/approxkl"):
        assert stats[key].item() == pytest.approx(whole_stats[key].item(), rel=1e-4), key


def test_micro_batches_step_once_after_an_earlier_stage_left_its_dataloader_at_the_end(
    tiny_lm, tmp_path
):
    """accelerate's gradient state is process-wide, and transformers' Trainer stops at
    max_steps without ending its dataloader: an upstream stage or an earlier sweep job in the
    process can leave one at its last batch. PPO's micro-batches still make one step."""
    whole, _, _, _ = _update(tiny_lm, tmp_path / "a", None)
    loader = Accelerator(cpu=True).prepare(DataLoader(list(range(4)), batch_size=2))
    batches = iter(loader)
    next(batches), next(batches)  # the last batch, and no StopIteration yet
    assert loader.gradient_state.end_of_dataloader  # what an unfinished stage leaves behind
    split, shapes, _, _ = _update(tiny_lm, tmp_path / "b", 1)
    assert len(shapes) == len(PROMPT_TOKENS) and len(split) == 1
    for name, grad in whole[0].items():
        assert torch.allclose(split[0][name], grad, rtol=1e-4, atol=1e-7), name
