"""Evaluation metrics on hand-made inputs."""

from __future__ import annotations

import pytest

from rlhf_exp.eval_metrics import bleu, bootstrap_ci, distinct_n, win_rate

TEXTS = [
    " it was a gorgeous, moving film with a superb cast.",
    " the plot dragged and the ending fell flat.",
]


def test_bleu_of_identical_texts_is_one_and_of_disjoint_texts_near_zero():
    same = bleu(TEXTS, TEXTS)
    assert same["sentence"] == pytest.approx(1.0) and same["corpus"] == pytest.approx(1.0)
    other = bleu(TEXTS, [" zebra quantum orchid", " velvet tractor sonnet"])
    assert other["sentence"] < 0.05 and other["corpus"] < 0.05
    partial = bleu(TEXTS[:1], [" it was a gorgeous, moving film with a weak cast."])
    assert 0.3 < partial["sentence"] < 1.0


def test_win_rate_counts_ties_as_half():
    assert win_rate([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == 0.5
    assert win_rate([2.0, 0.0, 1.0, 5.0], [1.0, 1.0, 1.0, 4.0]) == pytest.approx(2.5 / 4)
    with pytest.raises(ValueError):
        win_rate([1.0], [])


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a"], 2) == 0.0


def test_bootstrap_ci_brackets_the_mean_and_shrinks_with_n():
    small = bootstrap_ci([0.0, 1.0] * 10, seed=1)
    large = bootstrap_ci([0.0, 1.0] * 500, seed=1)
    assert small[0] < 0.5 < small[1] and large[0] < 0.5 < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_ci([3.0, 3.0, 3.0]) == (3.0, 3.0)
