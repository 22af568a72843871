"""Reward functions that break the contract (one finite float per completion), for the tests of
`rlhf_exp.rewards.CheckedReward`: `method.reward=tests.rewards.broken_rewards:one_score`."""

from __future__ import annotations

import math


def one_score(prompts: list[str], completions: list[str]) -> list[float]:
    return [0.0]  # one score for the whole batch: PPO used to broadcast it


def strings(prompts: list[str], completions: list[str]) -> list[str]:
    return ["0.5"] * len(completions)


def nan_at_2(prompts: list[str], completions: list[str]) -> list[float]:
    return [math.nan if i == 2 else 0.0 for i in range(len(completions))]


def completions_only(completions: list[str], **kwargs: object) -> list[float]:
    return [0.0] * len(completions)  # TRL's keyword style: no positional `prompts`


def buggy(prompts: list[str], completions: list[str]) -> list[float]:
    return [len(None) for _ in completions]  # type: ignore[arg-type]  # a bug inside
