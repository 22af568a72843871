"""PPO math against hand-computed values; masks, PAD vs EOS, rollout log-probs, the LoRA
reference. Fast: tensors and the one-layer `tiny_lm`, no training."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from rlhf_exp import rl
from rlhf_exp.config.schema import LoraSpec, ModelSpec
from rlhf_exp.generation import generate, truncate_after_eos
from rlhf_exp.methods.ppo import core
from rlhf_exp.methods.ppo.models import Reference
from rlhf_exp.models import apply_lora
from rlhf_exp.rl import position_ids, response_logprobs


def approx(values, abs=1e-6):
    return pytest.approx(values, abs=abs)


def test_gae_matches_hand_computation_and_stops_at_the_last_real_token():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])  # 99: junk after the end
    values = torch.tensor([[0.5, 0.2, 0.1], [0.3, 0.4, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = core.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    # row 0: deltas (-0.3, -0.1, 0.9); A2 = 0.9, A1 = -0.1 + .95 * .9, A0 = -0.3 + .95 * A1
    assert adv[0].tolist() == approx([0.41725, 0.755, 0.9])
    assert ret[0].tolist() == approx([0.91725, 0.955, 1.0])
    # row 1 ends at t=1: V_2 and r_2 are padding and must not leak in
    assert adv[1].tolist() == approx([1.62, 1.6, 0.0])
    assert ret[1].tolist() == approx([1.92, 2.0, 0.0])
    # gamma < 1: deltas (1, 0, 2); A1 = 0.72 * 2, A0 = 1 + 0.72 * 1.44
    adv, _ = core.gae(
        torch.tensor([[1.0, 0.0, 2.0]]), torch.zeros(1, 3), torch.ones(1, 3), 0.9, 0.8
    )
    assert adv[0].tolist() == approx([2.0368, 1.44, 2.0])


def test_token_rewards_put_the_score_on_the_last_real_token():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, non_score = core.token_rewards(scores, kl, mask, kl_coef=0.5)
    assert non_score.flatten().tolist() == approx([-0.05, -0.1, -0.15, -0.2, -0.25, 0.0])
    assert rewards.flatten().tolist() == approx([-0.05, -0.1, 0.85, -0.2, 1.75, 0.0])


def test_clipped_policy_loss():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 3.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -2.0, 50.0]])  # the last token is padding
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = core.policy_loss(torch.log(ratio), old, adv, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r)): -1.2 (clipped), -0.5, 2.2 -> mean 0.5 / 3
    assert loss.item() == approx(0.5 / 3)
    assert stats.clipfrac.item() == approx(1 / 3)
    assert stats.ratio_mean.item() == approx(3.1 / 3)
    logs = [math.log(1.5), math.log(0.5), math.log(1.1)]
    assert stats.approxkl.item() == approx(0.5 * sum(v * v for v in logs) / 3)
    assert stats.ratio_max_dev.item() == approx(0.5)
    # identical log-probs: ratio 1 everywhere, nothing clipped, loss = -mean(A)
    loss, stats = core.policy_loss(old, old, adv, mask, cliprange=0.2)
    assert (stats.ratio_max_dev, stats.approxkl, stats.clipfrac) == (0, 0, 0)
    assert loss.item() == approx(0.0)


def test_clipped_value_loss():
    values = torch.tensor([[1.0, 0.0, 0.5, 9.0]])
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]])
    returns = torch.tensor([[2.0, 0.0, 0.0, -9.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, clipfrac = core.value_loss(values, old, returns, mask, cliprange_value=0.2)
    # clipped values 0.7, 0.3, 0.5 -> max((v-G)^2, (vc-G)^2) = 1.69, 0.09, 0.25
    assert loss.item() == approx(0.5 * (1.69 + 0.09 + 0.25) / 3)
    assert clipfrac.item() == approx(2 / 3)


def test_kl_controllers():
    fixed = core.FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 64)  # error clipped to +0.2: beta *= 1 + 0.2 * 64 / 10000
    assert ctl.value == approx(0.1 * 1.00128, abs=1e-12)
    ctl.update(5.4, 1000)  # error -0.1: beta *= 1 - 0.1 * 0.1
    assert ctl.value == approx(0.1 * 1.00128 * 0.99, abs=1e-12)
    state = ctl.state_dict()
    ctl.update(float("nan"), 64)  # ignored
    fresh = core.AdaptiveKLController(1.0, 6.0, 10000)
    fresh.load_state_dict(state)
    assert fresh.value == ctl.value


def test_masks_ignore_tokens_after_eos_and_pad_is_not_eos():
    eos, pad = 0, 1
    raw = torch.tensor([[5, 0, 7, 0], [5, 6, 7, 8]])
    ids, mask, _ = truncate_after_eos(raw, eos, pad)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # a statistic over the response must not move when junk after the EOS changes
    x = torch.tensor([[1.0, 2.0, 50.0, -50.0], [1.0, 1.0, 1.0, 1.0]])
    junk = x.clone()
    junk[0, 2:] = 1e6
    assert rl.masked_mean(x, mask) == rl.masked_mean(junk, mask) == pytest.approx(7 / 6)
    # PAD positions read log-prob 0 (never -inf, which would turn masked sums into NaN), and
    # an EOS inside the response keeps its real log-prob
    logits = torch.randn(2, 4, 10)
    logp = response_logprobs(logits, ids, temperature=1.0, pad_id=pad)
    assert torch.isfinite(logp).all()
    assert (logp[ids == pad] == 0).all() and (logp[ids == eos] < 0).all()
    # PAD is suppressed from the distribution: other tokens' log-probs renormalise without it
    full = torch.log_softmax(logits, -1).gather(-1, ids.clamp(min=2).unsqueeze(-1)).squeeze(-1)
    assert (logp[1] > full[1]).all()


def test_rollout_logprobs_match_a_full_forward(tiny_lm):
    """The rollout's log-probs (from the sampling scores, KV cache) equal a full forward at
    the same temperature with the positions `generate` used: the basis of ratio == 1."""
    model, tok = tiny_lm
    assert tok.pad_token_id != tok.eos_token_id
    torch.manual_seed(0)
    prompts = ["the film", "the film number 3 was fine and", "it"]
    r = generate(model, tok, prompts, max_new_tokens=10, temperature=0.7, return_logprobs=True)
    with torch.no_grad():
        ids, am = r.input_ids, r.attention_mask
        logits = model(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits
        R = r.response_ids.shape[1]
        full = response_logprobs(logits[:, -R - 1 : -1], r.response_ids, 0.7, tok.pad_token_id)
    assert (r.logprobs[r.response_mask == 0] == 0).all()
    assert torch.allclose(r.logprobs, full, atol=1e-5)
    assert (r.entropy[r.response_mask.bool()] > 0).all()


def test_scoring_without_the_last_token_matches_a_full_forward(tiny_lm):
    """Log-probs and values come from a forward without the last token (it predicts nothing
    scored): the same numbers as a full forward's response positions, left padding and all."""
    from transformers import GPT2ForSequenceClassification

    from rlhf_exp.methods.ppo.models import PolicyAndValue, critic_values

    model, tok = tiny_lm
    torch.manual_seed(0)
    r = generate(model, tok, ["the film", "the film number 3 was fine and"], max_new_tokens=6)
    ids, am, R = r.input_ids, r.attention_mask, r.response_ids.shape[1]
    critic = GPT2ForSequenceClassification(copy.deepcopy(model.config)).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=am, position_ids=position_ids(am))
        full_logits = out.logits[:, -R - 1 : -1]
        full = response_logprobs(full_logits, r.response_ids, 0.7, tok.pad_token_id)
        assert torch.allclose(
            rl.token_logprobs(model, ids, am, r.response_ids, 0.7, tok.pad_token_id),
            full,
            atol=1e-6,
        )
        hidden = critic.transformer(
            input_ids=ids, attention_mask=am, position_ids=position_ids(am)
        ).last_hidden_state
        expected = critic.score(hidden[:, -R - 1 : -1]).squeeze(-1)
        assert torch.allclose(critic_values(critic, ids, am, R), expected, atol=1e-6)
        both = PolicyAndValue(model, None, model.config.n_embd).eval()
        both.value_head.weight.normal_(0, 1.0)
        logits, values = both(ids, am, R)
        trunk = model(
            input_ids=ids,
            attention_mask=am,
            position_ids=position_ids(am),
            output_hidden_states=True,
        ).hidden_states[-1][:, -R - 1 : -1]
    assert logits.shape == full_logits.shape
    assert torch.allclose(logits, full_logits, atol=1e-5)
    assert torch.allclose(values, both.value_head(trunk).squeeze(-1), atol=1e-5)


def test_lora_reference_is_exactly_the_base_model(tiny_lm):
    base, tok = tiny_lm
    base = copy.deepcopy(base).eval()
    spec = ModelSpec(lora_target_modules=["c_attn", "c_proj", "c_fc"])
    policy = apply_lora(copy.deepcopy(base), spec, LoraSpec(enabled=True, r=4), "CAUSAL_LM")
    with torch.no_grad():  # make the adapters do something (lora_B starts at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    ids = tok(["the film number 4 was fine"], return_tensors="pt")["input_ids"]
    am = torch.ones_like(ids)
    resp = ids[:, -3:]
    ref = Reference(policy, lora=True)
    got = ref.logprobs(policy, ids, am, resp, temperature=1.0, pad_id=tok.pad_token_id)
    with torch.no_grad():
        base_logits = base(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits
        pol_logits = policy(input_ids=ids, attention_mask=am, position_ids=position_ids(am)).logits
    want = response_logprobs(base_logits[:, -4:-1], resp, 1.0, tok.pad_token_id)
    assert torch.equal(got, want)  # bit-for-bit the base model
    assert not torch.allclose(pol_logits, base_logits)  # while the adapters are active
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_elements", [rl._CHUNK_ELEMENTS, 64])  # one chunk; a row each
def test_response_logprobs_equal_the_plain_formula_and_its_gradient(
    dtype: torch.dtype, temperature: float, chunk_elements: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row chunks, fp32 inside, the gradient built by hand: the same values and gradient as
    autograd through log-softmax of logits / T with PAD at -inf (a non-contiguous slice, as
    the models' `logits[:, :-1]` is)."""
    monkeypatch.setattr(rl, "_CHUNK_ELEMENTS", chunk_elements)
    pad = 0
    torch.manual_seed(0)
    wide = (torch.randn(5, 9, 50) * 3).to(dtype)
    ids = torch.randint(1, 50, (5, 8))
    ids[1, 5:] = pad
    ids[3, 2:] = pad
    upstream = torch.randn(5, 8)

    def plain(logits: torch.Tensor) -> torch.Tensor:
        z = logits.float() / temperature
        z = z.index_fill(-1, torch.tensor([pad]), float("-inf"))
        picked = torch.log_softmax(z, -1).gather(-1, ids.clamp(min=1).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(ids == pad, 0.0)

    results = []
    for fn in (plain, lambda x: response_logprobs(x, ids, temperature, pad)):
        x = wide.clone().requires_grad_(True)
        logp = fn(x[:, :-1])
        (logp * upstream).sum().backward()
        results.append((logp.detach(), x.grad))
    (want, want_grad), (got, got_grad) = results
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got_grad.dtype == dtype
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2  # bf16 gradients: one rounding apart
    torch.testing.assert_close(got_grad.float(), want_grad.float(), atol=tolerance, rtol=0)
    assert (got_grad[:, -1] == 0).all()  # the column past the response gets no gradient
    assert (got_grad[..., pad] == 0).all()  # nor does PAD, which the sampler never draws
