"""Preference labels (rlhf_exp/data/policy_pairs.py): the labelling rules, policy-sampled pairs
deterministic for a seed and labelled by the gold scorer on training prompts only, and the
label budget reported alike by a method that reads pairs and one that learns through the RM."""

from __future__ import annotations

import json
import math

import pytest

from rlhf_exp.data.policy_pairs import (
    PAIRS_KIND,
    Labelling,
    label_pairs,
    model_sampler,
    sample_pairs,
)
from rlhf_exp.data.sentiment import is_eval_prompt
from rlhf_exp.errors import UserError


def _gold(prompts, completions):
    return [float(len(c)) for c in completions]  # longer is better, ties at equal length


def test_noiseless_labels_follow_the_gold_score_and_skip_ties():
    rows = label_pairs(
        ["p1", "p2", "p3"], ["aaa", "b", "cc"], ["a", "bbb", "dd"], _gold, Labelling("none", 1, 0)
    )
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [
        ("p1", "aaa", "a"),
        ("p2", "bbb", "b"),
    ]  # p3 is a tie: no preference to learn
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in rows)


def test_bradley_terry_labels_agree_with_gold_at_the_model_rate():
    n, diff, temperature = 4000, 1.0, 2.0
    rows = label_pairs(
        [f"p{i}" for i in range(n)], ["xx"] * n, ["x"] * n, _gold, Labelling("bt", temperature, 3)
    )
    agree = sum(r["chosen"] == "xx" for r in rows) / n
    expected = 1 / (1 + math.exp(-diff / temperature))  # 0.62
    assert abs(agree - expected) < 0.03
    again = label_pairs(
        [f"p{i}" for i in range(n)], ["xx"] * n, ["x"] * n, _gold, Labelling("bt", temperature, 3)
    )
    assert again == rows  # deterministic for a seed


def test_sampling_stops_at_the_budget_and_is_deterministic(tiny_lm):
    model, tok = tiny_lm
    prompts = [f"the film number {i} was" for i in range(150)]

    def draw(seed):
        sampler = model_sampler(model, tok, max_new_tokens=6, seed=seed)
        return sample_pairs(sampler, prompts, _gold, Labelling("bt", 0.5, seed), wanted=70)

    rows, used = draw(0)
    assert len(rows) == 70 and used == 128  # two batches of 64 prompts were enough
    assert {r["prompt"] for r in rows} <= set(prompts)
    assert draw(0) == (rows, used)
    assert draw(1)[0] != rows


@pytest.mark.slow
def test_policy_pairs_end_to_end_matched_budget(run_method):
    common = ("dataset.pairs=policy", "dataset.label_noise=none", "dataset.n_labels=200")
    metrics, _, run, cache = run_method("method=reward", *common)
    assert metrics["data/labels/budget"] == metrics["data/labels/used"] == 200
    assert metrics["data/labels/policy_pairs"] == 1.0
    assert metrics["data/labels/agreement_with_gold"] == 1.0  # no noise: the gold ranking
    assert metrics["train/pairs"] <= 200  # ties after cutting may drop a few more
    (entry,) = [p for p in (cache.root / PAIRS_KIND).iterdir() if not p.name.startswith(".")]
    train = [json.loads(line) for line in (entry / "train.jsonl").read_text().splitlines()]
    assert len(train) == 200
    assert all(r["gold_chosen"] > r["gold_rejected"] for r in train)
    # the SFT policy's own samples, on training prompts only: never a held-out prompt
    assert not any(is_eval_prompt(r["prompt"]) for r in train)
    assert len({r["prompt"] for r in train}) == 200
    # best-of-n learns nothing itself: its labels are the reward model's, the same budget
    bon, _, _, _ = run_method("method=best_of_n", "method.n=2", "eval.num_prompts=8", *common)
    assert bon["data/labels/budget"] == bon["data/labels/used"] == 200
    gold, _, _, _ = run_method(
        "method=best_of_n", "method.reward=gold", "eval.reward_model=false",
        "method.n=2", "eval.num_prompts=8", *common,
    )  # fmt: skip
    assert gold["data/labels/used"] == 0  # picked by the gold reward: no labels used


def test_budget_beyond_the_data_is_one_line(run_method):
    with pytest.raises(UserError, match=r"dataset.n_labels=999999 exceeds the \d+ training"):
        run_method("method=dpo", "dataset.n_labels=999999", "eval.reward_model=false")


def test_sft_stage_key_ignores_label_knobs(compose_cfg):
    from rlhf_exp.config.schema import validate
    from rlhf_exp.context import stage_key, upstream_run

    plain = validate(compose_cfg("method=dpo"))
    labelled = validate(compose_cfg("method=dpo", "dataset.pairs=policy", "dataset.n_labels=50"))
    assert stage_key(upstream_run(plain, "sft")) == stage_key(upstream_run(labelled, "sft"))
    assert stage_key(upstream_run(plain, "reward")) != stage_key(upstream_run(labelled, "reward"))
