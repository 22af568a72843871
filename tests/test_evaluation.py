"""Shared evaluation: scores come from the named reward functions over sampled completions."""

from __future__ import annotations

import math

import pytest

from rlhf_exp.config.schema import EvalSpec
from rlhf_exp.evaluation import Samples, evaluate_alignment, evaluate_policy, score_samples


def test_score_samples_means_and_stats():
    samples = Samples(["a", "b"], [" great", " awful"], lengths=[3, 5], ended=[True, False])
    scores = score_samples(samples, {"len": lambda p, c: [float(len(x)) for x in c]})
    assert scores == {"len": 6.0, "len_std": 0.0, "length_mean": 4.0, "eos_fraction": 0.5}


def test_evaluate_policy_uses_gold_reward_and_is_seeded(tiny_lm):
    model, tok = tiny_lm
    prompts = {"prompt": ["the film", "the film number 2", "it was"]}
    spec = EvalSpec(max_new_tokens=6, num_prompts=2)
    m1, s1 = evaluate_policy(model, tok, prompts, spec, seed=3, gold_reward="vader_sentiment")
    m2, s2 = evaluate_policy(model, tok, prompts, spec, seed=3, gold_reward="vader_sentiment")
    assert s1.completions == s2.completions and m1 == m2
    assert len(s1.prompts) == 2
    assert {"eval/gold_reward", "eval/gold_reward_std", "eval/length_mean"} <= set(m1)
    assert -1.0 <= m1["eval/gold_reward"] <= 1.0


def _prompts():
    from datasets import Dataset

    return Dataset.from_dict(
        {
            "prompt": ["the film", "the film number 2", "it was", "the film number 7 was"],
            "reference": [" was fine.", " was fine and then it ended.", " fine.", " fine."],
        }
    )


def test_policy_against_itself_has_zero_kl_and_half_win_rate(tiny_lm):
    model, tok = tiny_lm
    spec = EvalSpec(max_new_tokens=8)
    metrics, table = evaluate_alignment(
        model, tok, _prompts(), spec, seed=0, gold_reward="vader_sentiment", reference=model
    )
    assert metrics["eval/kl"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["eval/win_rate_gold"] == 0.5
    assert metrics["eval/greedy/win_rate_gold"] == 0.5
    assert metrics["eval/gold_reward"] == metrics["eval/sft/gold_reward"]
    ci = (metrics["eval/gold_reward_ci_low"], metrics["eval/gold_reward_ci_high"])
    assert ci[0] <= metrics["eval/gold_reward"] <= ci[1]
    assert 0.0 <= metrics["eval/bleu"] <= 1.0 and 0.0 < metrics["eval/distinct_1"] <= 1.0
    assert table.count("\n") == 1 + 4 and "the film number 2" in table


def test_kl_of_changed_lora_policy_against_disabled_adapters_is_positive(tiny_lm):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    peft_model = get_peft_model(
        model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    spec = EvalSpec(max_new_tokens=8, greedy=False)
    same, _ = evaluate_alignment(peft_model, tok, _prompts(), spec, seed=0, gold_reward=None)
    assert same["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # zero-initialised adapters
    generator = torch.Generator().manual_seed(0)  # not the global stream: order-independent
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    changed, _ = evaluate_alignment(peft_model, tok, _prompts(), spec, seed=0, gold_reward=None)
    assert changed["eval/kl_k3"] > 0.01  # never negative; k1 can be, on 4 samples
    assert "eval/win_rate_gold" not in changed and "eval/greedy/gold_reward" not in changed


def test_completion_logprobs_reproduce_sampling_logprobs(tiny_lm):
    import torch

    from rlhf_exp.evaluation import completion_logprobs
    from rlhf_exp.generation import generate

    model, tok = tiny_lm
    torch.manual_seed(0)
    rollout = generate(
        model,
        tok,
        list(_prompts()["prompt"]),
        max_new_tokens=8,
        temperature=0.7,
        return_logprobs=True,
    )
    tokens = completion_logprobs(model, rollout, temperature=0.7, pad_id=tok.pad_token_id)
    assert tokens.flatten().tolist() == pytest.approx(rollout.logprobs.flatten().tolist(), abs=1e-4)
    hot = completion_logprobs(model, rollout, temperature=5.0, pad_id=tok.pad_token_id)
    assert hot.sum(1).tolist() != pytest.approx(tokens.sum(1).tolist(), abs=1e-3)


def test_sequence_kl_k1_and_k3():
    import torch

    from rlhf_exp.evaluation import sequence_kl

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    logps = torch.log(torch.tensor([[0.5, 0.5, 0.3], [0.25, 0.2, 0.2]]))
    assert sequence_kl(logps, logps, mask) == {"k1": 0.0, "k3": 0.0}
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.9], [0.5, 0.9, 0.9]]))
    kl = sequence_kl(logps, ref, mask)
    # k1: sequence 1 log 2, sequence 2 -log 2 (after its end nothing counts): mean 0
    assert kl["k1"] == pytest.approx(0.0, abs=1e-6)
    # k3 = (r - 1) - log r per token: r = 0.5 -> ln 2 - 0.5; r = 2 -> 1 - ln 2; mean of both
    assert kl["k3"] == pytest.approx(0.5 * ((math.log(2) - 0.5) + (1 - math.log(2))))


def test_samples_table_escapes_pipes_and_line_breaks():
    from rlhf_exp.evaluation import _Side, samples_table

    def side(texts: list[str], gold: list[float]) -> _Side:
        return _Side(Samples(["a | b", "c"], texts, [1, 1], [True, True]), None, gold, None)

    table = samples_table(
        ["a | b", "c"],
        ["ref", "ref2"],
        side(["good", "great"], [0.5, 0.9]),
        side(["x\ny", "z"], [0.1, -0.2]),
    )
    lines = table.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| prompt | reference | SFT | policy |")
    assert lines[2] == "| a \\| b | ref | x y | good | 0.10 | 0.50 |"


def test_samples_table_shows_the_reward_models_scores_without_a_gold_reward():
    from rlhf_exp.evaluation import _Side, samples_table

    def side(text: str, rm: list[float] | None) -> _Side:
        return _Side(Samples(["p"], [text], [1], [True]), None, None, rm)

    table = samples_table(["p"], ["ref"], side("mine", [1.25]), side("sft", [-0.5]))
    assert table.splitlines()[0] == "| prompt | reference | SFT | policy | RM SFT | RM policy |"
    assert table.splitlines()[2] == "| p | ref | sft | mine | -0.50 | 1.25 |"
    bare = samples_table(["p"], ["ref"], side("mine", None), side("sft", None))
    assert bare.splitlines()[0] == "| prompt | reference | SFT | policy |"
    assert bare.splitlines()[2] == "| p | ref | sft | mine |"
