"""The reward registry and the VADER gold reward."""

from __future__ import annotations

import pytest

import rlhf_exp.rewards as rewards
from rlhf_exp.errors import UserError
from rlhf_exp.rewards import get_reward, register_reward, reward_names
from rlhf_exp.rewards.gold import vader_compound


def test_vader_ranks_positive_above_negative() -> None:
    gold = get_reward("vader_sentiment")
    prompts = ["I watched The Silent Harbor last night and"] * 3
    completions = [
        " it was a gorgeous, moving film and I loved every minute.",
        " it runs a little over two hours.",
        " it was a dull, awful mess and I hated the ending.",
    ]
    pos, neutral, neg = gold(prompts, completions)
    assert pos > neutral > neg
    assert pos > 0.5 and neg < -0.5


def test_vader_scores_are_floats_in_range() -> None:
    texts = [" superb!!! " * 20, " awful, terrible, horrible " * 20, "", " the."]
    scores = get_reward("vader_sentiment")([""] * len(texts), texts)
    assert len(scores) == len(texts)
    assert all(isinstance(s, float) and -1.0 <= s <= 1.0 for s in scores)
    assert scores == vader_compound(texts)


def test_vader_scores_the_completion_only() -> None:
    gold = get_reward("vader_sentiment")
    completion = [" it was fine."]
    assert gold(["A wonderful, brilliant start"], completion) == gold(
        ["A dreadful start"], completion
    )


def test_vader_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        get_reward("vader_sentiment")(["a", "b"], [" c."])


def test_builtins_are_registered() -> None:
    assert "vader_sentiment" in reward_names()
    assert reward_names() == sorted(reward_names())


def test_registering_a_name_twice_raises() -> None:
    with pytest.raises(ValueError, match="'vader_sentiment' is already registered"):
        register_reward("vader_sentiment")(lambda prompts, completions: [0.0] * len(completions))


def test_unknown_name_lists_the_registered_ones() -> None:
    with pytest.raises(UserError) as info:
        get_reward("nope")
    expected = f"reward function 'nope' is unknown; registered: {', '.join(reward_names())}"
    assert str(info.value) == expected
    assert "vader_sentiment" in str(info.value)


def test_registered_function_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    # A copy of the registry keeps this test's function out of every other test.
    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))

    @register_reward("length_reward")
    def length_reward(prompts: list[str], completions: list[str]) -> list[float]:
        return [float(len(c)) for c in completions]

    assert get_reward("length_reward").fn is length_reward
    assert "length_reward" in reward_names()
