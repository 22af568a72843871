"""Reward functions by registered name or by import path, and what a `reward` knob may name."""

from __future__ import annotations

import pytest

from rlhf_exp.errors import ConfigError, UserError
from rlhf_exp.rewards import get_reward, resolve_reward
from rlhf_exp.rewards.gold import vader_sentiment


def test_an_import_path_gives_the_function_itself():
    assert get_reward("rlhf_exp.rewards.gold:vader_sentiment").fn is vader_sentiment
    assert resolve_reward("rlhf_exp.rewards.gold:vader_sentiment", None).endswith(
        ":vader_sentiment"
    )


def test_model_gold_and_names_resolve():
    assert resolve_reward("model", "vader_sentiment") is None
    assert resolve_reward("gold", "vader_sentiment") == "vader_sentiment"
    assert resolve_reward("vader_sentiment", None) == "vader_sentiment"


@pytest.mark.parametrize(
    ("choice", "gold", "message"),
    [
        ("gold", None, "no gold_reward"),
        ("nope", None, "registered functions"),
        ("no_such_module:f", None, "importable module"),
        ("rlhf_exp.rewards.gold:nope", None, "importable module"),
    ],
)
def test_unservable_choices_name_the_key(choice, gold, message):
    with pytest.raises(ConfigError, match=message) as err:
        resolve_reward(choice, gold)
    assert str(err.value).startswith("method.reward=")


def test_a_non_callable_is_refused():
    with pytest.raises(UserError, match="not callable"):
        get_reward("rlhf_exp.rewards:_REGISTRY")
