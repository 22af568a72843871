"""Every reward function is handed out behind its contract (`rlhf_exp.rewards.CheckedReward`):
called as fn(prompts, completions), one finite real number per completion, or one line
naming the function, the bad value and the completion; a bug inside a function keeps its
traceback."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import rlhf_exp.rewards as rewards
from rlhf_exp.errors import ConfigError, UserError
from rlhf_exp.rewards import CheckedReward, check_scores, get_reward, resolve_reward
from tests.conftest import run_cli

BROKEN = "tests.rewards.broken_rewards"
FIX = "it must return one float per completion"
CONTRACT = (
    "a reward function takes (prompts, completions), two lists of str, and returns one float "
    "per completion"
)
PROMPTS, TEXTS = ["p"] * 4, ["a", "b", "c", "d"]


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("one_score", f"returned 1 score for 4 completions; {FIX}"),
        ("strings", f"returned str '0.5' for completion 0 (of 4); {FIX}"),
        ("nan_at_2", "returned nan for completion 2 (of 4); scores must be finite"),
    ],
)
def test_a_broken_result_is_one_line_naming_the_function(fn, message):
    reward = get_reward(f"{BROKEN}:{fn}", "method.reward")
    with pytest.raises(UserError) as err:
        reward(PROMPTS, TEXTS)
    assert str(err.value) == f"method.reward={BROKEN}:{fn} {message}"


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        ([0.0] * 5, f"returned 5 scores for 4 completions; {FIX}"),
        (1.0, f"returned float 1.0 for 4 completions; {FIX}"),
        (None, f"returned NoneType None for 4 completions; {FIX}"),
        ("0.5", f"returned str '0.5' for 4 completions; {FIX}"),
        (torch.zeros(4, 1), f"returned an array of shape (4, 1) for 4 completions; {FIX}"),
        ([0.0, 0.0, 0.0, 1j], f"returned complex 1j for completion 3 (of 4); {FIX}"),
        ([0.0, math.inf, 0.0, 0.0], "returned inf for completion 1 (of 4); scores must be finite"),
        (np.array([0.0, 0.0, -np.inf, 0.0]), "returned -inf for completion 2 (of 4); scores"),
    ],
)
def test_what_is_not_one_finite_number_per_completion_is_refused(scores, message):
    with pytest.raises(UserError) as err:
        check_scores(scores, 4, "method.reward=f")
    assert str(err.value).startswith(f"method.reward=f {message}")


@pytest.mark.parametrize(
    "scores",
    [
        [1, 2.5, np.float32(3), True],  # ints, numpy scalars, bools are real numbers
        (1.0, 2.5, 3.0, 1.0),
        np.array([1.0, 2.5, 3.0, 1.0]),
        torch.tensor([1.0, 2.5, 3.0, 1.0]),
        [torch.tensor(1.0), 2.5, 3, torch.tensor(1)],  # 0-d tensors in a list
    ],
)
def test_sequences_arrays_and_tensors_of_numbers_are_scores(scores):
    out = check_scores(scores, 4, "method.reward=f")
    assert out == [1.0, 2.5, 3.0, 1.0] and all(type(s) is float for s in out)


@pytest.mark.parametrize(
    ("name", "takes"),
    [("os:system", "(command)"), (f"{BROKEN}:completions_only", "(completions, **kwargs)")],
)
def test_a_wrong_signature_is_refused_with_the_expected_one(name, takes):
    with pytest.raises(ConfigError) as err:  # at validation, before anything loads
        resolve_reward(name, None)
    assert str(err.value) == f"method.reward={name!r} is invalid: takes {takes}; {CONTRACT}"
    with pytest.raises(UserError) as err:
        get_reward(name, "method.reward")
    assert str(err.value) == f"method.reward={name} takes {takes}; {CONTRACT}"


def test_a_call_refused_by_a_callable_without_a_readable_signature_is_one_line(monkeypatch):
    monkeypatch.setattr(rewards, "_signature_problem", lambda fn: None)  # as for some builtins
    reward = CheckedReward(lambda completions: [0.0] * len(completions), "method.reward=m:f")
    with pytest.raises(UserError, match=r"^method.reward=m:f cannot be called as fn\(prompts, "):
        reward(PROMPTS, TEXTS)


def test_a_bug_inside_a_reward_function_keeps_its_own_error():
    with pytest.raises(TypeError, match="NoneType"):  # not a contract violation: traceback
        get_reward(f"{BROKEN}:buggy", "method.reward")(PROMPTS, TEXTS)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):  # the gold's own check
        get_reward("vader_sentiment")(["a", "b"], [" c."])


def test_the_gold_reward_is_checked_too_and_named_by_its_key(monkeypatch):
    monkeypatch.setattr(rewards, "_REGISTRY", dict(rewards._REGISTRY))
    rewards.register_reward("half")(lambda prompts, completions: [0.0] * (len(completions) // 2))
    with pytest.raises(UserError, match=r"^dataset.gold_reward=half returned 2 scores for 4 "):
        get_reward("half", "dataset.gold_reward")(PROMPTS, TEXTS)


def test_ppo_with_one_score_for_the_batch_stops_in_one_line(tmp_path: Path):
    """PPO broadcast a single score over the whole rollout (rc 0, a normal summary)."""
    from rlhf_exp.config.schema import TinySpec
    from rlhf_exp.models.tiny import build_tiny_base

    sft = tmp_path / "sft"  # a tiny untrained policy: no SFT stage to train first
    corpus = [f"the film number {i} was fine and then it ended." for i in range(300)]
    build_tiny_base(TinySpec(n_layer=1, n_embd=32, n_head=2, vocab_size=300), corpus, sft)
    result = run_cli(
        f"paths.root_dir={tmp_path}",
        "method=ppo",
        "debug=fast",
        f"method.reward={BROKEN}:one_score",
        f"upstream.sft.path={sft}",
        "eval.reward_model=false",
    )
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    # (the line may follow the progress bar's unfinished line on stderr)
    lines = [
        line[line.index("error: ") :] for line in result.stderr.splitlines() if "error: " in line
    ]
    assert lines == [
        f"error: method.reward={BROKEN}:one_score returned 1 score for 64 completions; {FIX}"
    ]
