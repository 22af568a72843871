"""Sampling: EOS truncation, PAD distinct from EOS, left-padded prompts, determinism."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhf_exp.generation import generate, truncate_after_eos


def test_truncate_after_eos_keeps_first_eos_and_pads_the_rest():
    eos, pad = 0, 1
    ids = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8], [0, 9, 9, 9]])
    out, mask, ended = truncate_after_eos(ids, eos, pad)
    assert out.tolist() == [[5, 0, 1, 1], [5, 6, 7, 8], [0, 1, 1, 1]]
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert ended.tolist() == [True, False, True]


def test_generate_layout_and_masks(tiny_lm):
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    # bias the model towards EOS so some rows end early
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += 0.5 * model.transformer.wte.weight.mean(0)
    prompts = ["the film", "the film number 3 was", "it"]
    torch.manual_seed(0)
    r = generate(model, tok, prompts, max_new_tokens=12, batch_size=2)
    assert r.prompt_ids.shape[0] == r.response_ids.shape[0] == 3
    # left padding: every prompt ends at the last column
    assert r.prompt_mask[:, -1].tolist() == [1, 1, 1]
    assert r.prompt_mask[0, 0] == 0  # the short prompt is padded on the left
    # PAD never inside a response, only after it; EOS only as a response's last token
    pad, eos = tok.pad_token_id, tok.eos_token_id
    assert ((r.response_ids == pad) == (r.response_mask == 0)).all()
    for row, mask in zip(r.response_ids, r.response_mask, strict=True):
        kept = row[mask.bool()].tolist()
        assert eos not in kept[:-1]
    assert r.ended.tolist() == [(row == eos).any().item() for row in r.response_ids]
    assert len(r.texts) == 3 and all("<|pad|>" not in t for t in r.texts)


def test_generate_is_seeded_and_greedy_is_deterministic(tiny_lm):
    model, tok = tiny_lm
    torch.manual_seed(1)
    a = generate(model, tok, ["the film"] * 4, max_new_tokens=8)
    torch.manual_seed(1)
    b = generate(model, tok, ["the film"] * 4, max_new_tokens=8)
    assert torch.equal(a.response_ids, b.response_ids)
    g1 = generate(model, tok, ["the film"] * 2, max_new_tokens=8, greedy=True)
    g2 = generate(model, tok, ["the film"] * 2, max_new_tokens=8, greedy=True)
    assert torch.equal(g1.response_ids, g2.response_ids)
    assert torch.equal(g1.response_ids[0], g1.response_ids[1])


def test_generate_rejects_pad_equal_to_eos(tiny_lm):
    model, tok = tiny_lm
    tok2 = type(tok).from_pretrained(tok.name_or_path)
    tok2.pad_token = tok2.eos_token
    with pytest.raises(ValueError, match="PAD token distinct from EOS"):
        generate(model, tok2, ["x"], max_new_tokens=2)


def test_prompts_longer_than_the_positions_keep_their_end(tiny_lm):
    model, tok = tiny_lm
    positions = model.config.n_positions
    long = "the film number 1 was fine and then it ended. " * 60  # far over the positions
    ending = " the film number 7 was"
    r = generate(model, tok, [long + ending, "it"], max_new_tokens=8, greedy=True)
    width = r.prompt_ids.shape[1]
    assert width == positions - 8  # cut to what fits beside the new tokens
    kept = tok.decode(r.prompt_ids[0][r.prompt_mask[0].bool()])
    assert kept.endswith(ending)  # the left was cut, not the end


def _weight_casts(model, fn) -> int:
    """Copies made of `model`'s weights (autocast's casts) while `fn` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    weights = {p.data_ptr() for p in model.parameters()}

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in weights:
                Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.n


def test_sampling_casts_frozen_weights_once_under_autocast(tiny_lm):
    """A frozen policy (LoRA's base) sampled under bf16 autocast: its weights are cast once for
    the whole sampling, as a trainable policy's are, not again at every decode step; the
    tokens are those of the uncached path, and the weights stay frozen afterwards."""
    model, tok = copy.deepcopy(tiny_lm[0]).requires_grad_(False), tiny_lm[1]
    prompts = ["the film", "it was"]
    weights = sum(1 for _ in model.parameters())

    def sample() -> list[list[int]]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            r = generate(model, tok, prompts, max_new_tokens=8, greedy=True)
        return r.response_ids.tolist()

    def plain() -> None:  # transformers' generate alone: frozen weights cast every step
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            model.generate(**enc, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)

    casts = _weight_casts(model, sample)
    assert 0 < casts <= weights  # once each at most
    assert _weight_casts(model, plain) > 4 * casts  # the cost it removes: once per decode step
    assert not any(p.requires_grad for p in model.parameters())
    assert not torch.is_autocast_cpu_enabled()
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        uncached = generate(model, tok, prompts, max_new_tokens=8, greedy=True)
    assert sample() == uncached.response_ids.tolist()
