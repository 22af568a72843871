"""Sampling: EOS truncation, PAD distinct from EOS, left-padded prompts, determinism, and the
exponential race that stands in for torch.multinomial's on CPUs."""

from __future__ import annotations

import copy

import pytest
import torch

from rlhf_exp import generation
from rlhf_exp.generation import draw_by_race, generate, truncate_after_eos


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


def test_draw_by_race_draws_each_index_at_its_probability():
    probs = torch.tensor([0.1, 0.0, 0.45, 0.3, 0.0, 0.15]).repeat(60_000, 1) * 3.0  # unnormalised
    torch.manual_seed(0)
    drawn = draw_by_race(probs)
    assert drawn.shape == (60_000, 1) and drawn.dtype == torch.int64
    freq = torch.bincount(drawn.squeeze(1), minlength=6).double() / 60_000
    assert freq[1] == 0 and freq[4] == 0  # a zero entry is never drawn
    # 4 standard errors of a frequency at these probabilities: ~0.0082 at most
    assert torch.allclose(
        freq, torch.tensor([0.1, 0.0, 0.45, 0.3, 0.0, 0.15]).double(), atol=0.0085
    )
    torch.manual_seed(0)
    assert torch.equal(draw_by_race(probs), drawn)  # the global RNG: seeded runs repeat
    bad = torch.tensor([[0.5, float("nan")], [0.5, 0.5]])
    assert draw_by_race(bad) is None and draw_by_race(torch.zeros(2, 3)) is None


def test_close_distributions_drawn_from_one_seed_mostly_agree():
    """What the evaluation's shared seed for a policy and its reference relies on: racing the
    same exponentials, two distributions 0.04 apart (total variation) pick the same token in
    ~94% of rows (torch's multinomial: 94%; at least (1 - TV) / (1 + TV) = 92% for a race).
    An inverse-CDF draw from the same uniforms agreed in 48%."""
    torch.manual_seed(0)
    logits = torch.randn(300)
    a = torch.softmax(logits, dim=-1).repeat(4000, 1)
    b = torch.softmax(logits + 0.1 * torch.randn(300), dim=-1).repeat(4000, 1)
    tv = 0.5 * (a[0] - b[0]).abs().sum().item()
    assert 0.03 < tv < 0.06
    torch.manual_seed(1)
    drawn_a = draw_by_race(a)
    torch.manual_seed(1)
    drawn_b = draw_by_race(b)
    assert (drawn_a == drawn_b).double().mean() > 0.9


def test_invalid_probabilities_still_get_torchs_error():
    with generation.one_draw_per_row_by_race():
        with pytest.raises(RuntimeError, match="probability tensor contains"):
            torch.multinomial(torch.tensor([[0.5, -0.1]]), 1)
        with pytest.raises(RuntimeError, match="sum of probabilities <= 0"):
            torch.multinomial(torch.zeros(1, 3), 1)
        several = torch.multinomial(torch.ones(2, 5), 3)  # several draws: torch's own
    assert several.shape == (2, 3) and torch.multinomial is generation._torch_multinomial


def test_sampled_tokens_follow_the_models_distribution(tiny_lm, monkeypatch):
    """The first sampled token of many rows of one prompt against softmax(logits / T) with PAD
    suppressed, by Pearson's chi-square over the vocabulary; the draws came from draw_by_race.
    Seeds 0-2 give 282-303 on 298 degrees of freedom (torch's own multinomial: 267-296). A
    draw shifted by one token scores ~1,600, one that ignores the model ~800."""
    model, tok = tiny_lm
    calls = []
    monkeypatch.setattr(
        generation, "draw_by_race", lambda p, g=None: calls.append(p.shape) or draw_by_race(p, g)
    )
    n, temperature = 20_000, 0.7
    torch.manual_seed(0)
    r = generate(model, tok, ["the film"] * n, max_new_tokens=1, temperature=temperature,
                 batch_size=n, return_logprobs=True)  # fmt: skip
    assert calls == [(n, len(tok))]
    with torch.no_grad():
        logits = model(**tok(["the film"], return_tensors="pt")).logits[0, -1] / temperature
    logits[tok.pad_token_id] = -float("inf")
    expected = torch.softmax(logits.double(), dim=-1) * n
    observed = torch.bincount(r.response_ids[:, 0], minlength=len(expected)).double()
    assert observed[tok.pad_token_id] == 0
    possible = expected > 0
    chi2 = ((observed - expected)[possible] ** 2 / expected[possible]).sum().item()
    dof = int(possible.sum()) - 1
    assert chi2 < dof + 6 * (2 * dof) ** 0.5  # 6 standard deviations of the chi-square
    # the log-prob each row carries is its token's under that distribution
    logp = (expected / n).log()[r.response_ids[:, 0]]
    assert torch.allclose(r.logprobs[:, 0].double(), logp, atol=1e-5)
