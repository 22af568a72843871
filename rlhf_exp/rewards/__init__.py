"""Reward functions behind one interface, looked up by name from the config.

A reward function takes the prompts and the completions of a batch and returns one float per
completion: `fn(prompts, completions) -> scores`. Gold scorers (ground truth an experiment is
judged by, e.g. `dataset.gold_reward: vader_sentiment`) register here by decorator:

    @register_reward("my_reward")
    def my_reward(prompts: list[str], completions: list[str]) -> list[float]: ...

Importing this package registers the built-ins. It stays light (no torch) so config
validation can check reward names before anything heavy loads.
"""

from __future__ import annotations

from collections.abc import Callable

from rlhf_exp.errors import UserError

RewardFn = Callable[[list[str], list[str]], list[float]]

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator registering a reward function under `name`; a name can be taken only once."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY:
            # Silently replacing a scorer would change what every experiment is judged by.
            raise ValueError(f"reward function {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def get_reward(name: str) -> RewardFn:
    """The reward function registered as `name`; an unknown name lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        registered = ", ".join(reward_names())
        raise UserError(f"reward function {name!r} is unknown; registered: {registered}") from None


def reward_names() -> list[str]:
    """Registered reward function names, sorted."""
    return sorted(_REGISTRY)


# Imported last: gold.py registers itself through `register_reward`, defined above.
from rlhf_exp.rewards import gold  # noqa: E402, F401
