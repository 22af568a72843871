"""Shared evaluation: scores come from the named reward functions over sampled completions."""

from __future__ import annotations

from rlhf_exp.config.schema import EvalSpec
from rlhf_exp.evaluation import Samples, evaluate_policy, score_samples


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
