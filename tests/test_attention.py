"""`model.attn_implementation=auto` (rlhf_exp/attention.py): each call computes exactly what
eager attention computes for short bf16 rows on a CPU, and what SDPA computes otherwise."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

from rlhf_exp import attention
from rlhf_exp.config.schema import ModelSpec
from rlhf_exp.models.loading import load_causal_lm

SHORT, LONG = attention.EAGER_MAX_KEYS, attention.EAGER_MAX_KEYS + 1


CONFIG = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=512, n_positions=256,
                    bos_token_id=0, eos_token_id=0, pad_token_id=0, num_labels=1)  # fmt: skip


def _under_each_attention(model_class: type) -> dict[str, torch.nn.Module]:
    """One tiny GPT-2's weights under eager attention, SDPA and ours."""
    attention.register()
    torch.manual_seed(0)
    out = {}
    for name in ("eager", "sdpa", attention.NAME):
        own = copy.deepcopy(CONFIG)  # the attention code reads it from the config each call
        own._attn_implementation = name
        out[name] = model_class(own).eval()
        if name != "eager":
            out[name].load_state_dict(out["eager"].state_dict())
    return out


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return _under_each_attention(GPT2LMHeadModel)


def _batch(length: int, padded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(1, 100, (3, length))
    mask = torch.ones_like(ids)
    if padded:  # left padding, as batches of prompts have
        mask[1, :4] = 0
        mask[2, :9] = 0
    return ids, mask


def _logits_and_grads(model, ids, mask, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(input_ids=ids, attention_mask=mask).logits
    logits.float().pow(2).mean().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    return logits.detach(), grads


@pytest.mark.parametrize("padded", [False, True], ids=["causal-only", "left-padded"])
@pytest.mark.parametrize(
    ("length", "bf16", "same_as", "not_as"),
    [
        (SHORT, True, "eager", "sdpa"),
        (LONG, True, "sdpa", "eager"),
        (SHORT, False, "sdpa", None),  # fp32: the kernels tie, SDPA stays
    ],
    ids=["short-bf16", "long-bf16", "short-fp32"],
)
def test_each_call_computes_what_the_faster_kernel_computes(
    models, length, bf16, same_as, not_as, padded
):
    ids, mask = _batch(length, padded)
    ours = _logits_and_grads(models[attention.NAME], ids, mask, bf16)
    reference = _logits_and_grads(models[same_as], ids, mask, bf16)
    assert torch.equal(ours[0], reference[0])
    assert all(torch.equal(a, b) for a, b in zip(ours[1], reference[1], strict=True))
    if not_as is not None:  # the two kernels differ here, so the equality above says which ran
        assert not torch.equal(ours[0], _logits_and_grads(models[not_as], ids, mask, bf16)[0])


def test_sampling_with_a_cache_matches_eager_attention_on_short_rows(models):
    """Decoding one token at a time over a cache (a one-row query, SDPA's mask left out when
    there is no padding) gives eager attention's tokens and scores."""
    ids, mask = _batch(20, padded=True)
    outs = {}
    for name in ("eager", attention.NAME):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            outs[name] = models[name].generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                output_scores=True, return_dict_in_generate=True, pad_token_id=0,
            )  # fmt: skip
    assert torch.equal(outs["eager"].sequences, outs[attention.NAME].sequences)
    for a, b in zip(outs["eager"].scores, outs[attention.NAME].scores, strict=True):
        assert torch.equal(a, b)


def test_auto_loads_with_our_attention_and_saves_a_portable_config(tmp_path, models):
    models["eager"].save_pretrained(tmp_path / "base")
    model = load_causal_lm(str(tmp_path / "base"), ModelSpec(name_or_path=str(tmp_path / "base")))
    assert ModelSpec().attn_implementation == "auto"
    assert model.config._attn_implementation == attention.NAME
    model.save_pretrained(tmp_path / "saved")
    # the choice is this process's, not the checkpoint's: the saved config does not name it
    assert attention.NAME not in (tmp_path / "saved/config.json").read_text()
    pinned = load_causal_lm(
        str(tmp_path / "base"),
        ModelSpec(name_or_path=str(tmp_path / "base"), attn_implementation="sdpa"),
    )
    assert pinned.config._attn_implementation == "sdpa"


def test_real_shaped_dialogues_are_scored_by_the_kernel_each_batch_needs():
    """HH-shaped dialogues (long multi-turn ones and short ones) through the reward scorer's
    own batching: each batch of short rows scores as eager attention does, each longer one as
    SDPA does, and both kinds occur."""
    from rlhf_exp.data.synthetic_dialogues import hh_like_rows
    from rlhf_exp.models.tiny import train_tokenizer
    from rlhf_exp.rewards.model_scorer import RewardModelScorer

    dialogues = [row["chosen"] for row in hh_like_rows(40, seed=3)]
    replies = [text[text.rindex("Assistant:") :] for text in dialogues]  # their last turns
    tokenizer = train_tokenizer(dialogues, vocab_size=400, max_length=256)
    sequences = [ids[:200] for ids in tokenizer([*dialogues, *replies])["input_ids"]]
    assert len(tokenizer) <= CONFIG.vocab_size
    reward_models = _under_each_attention(GPT2ForSequenceClassification)
    scorers = {}
    for name, model in reward_models.items():
        model.config.pad_token_id = tokenizer.pad_token_id  # the head scores the last real token
        scorers[name] = RewardModelScorer(model, tokenizer, budget=None, max_batch_tokens=512)
    lengths = [len(s) for s in sequences]
    order = sorted(range(len(sequences)), key=lengths.__getitem__)
    batches = scorers[attention.NAME]._batches(order, lengths)
    widths = [max(lengths[i] for i in batch) for batch in batches]
    assert min(widths) <= SHORT < max(widths)  # both kernels have batches to run
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = {name: scorer.score_ids(sequences) for name, scorer in scorers.items()}
    for batch, width in zip(batches, widths, strict=True):
        expected = "eager" if width <= SHORT else "sdpa"
        assert [scores[attention.NAME][i] for i in batch] == [scores[expected][i] for i in batch]
