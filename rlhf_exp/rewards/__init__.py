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
    """The reward function registered as `name`, or at import path `package.module:function`
    (a function of your own, no registration needed); an unknown name lists the valid ones."""
    if ":" in name:
        return _import_reward(name)
    try:
        return _REGISTRY[name]
    except KeyError:
        registered = ", ".join(reward_names())
        raise UserError(f"reward function {name!r} is unknown; registered: {registered}") from None


def _import_reward(path: str) -> RewardFn:
    import importlib

    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        raise UserError(
            f"reward function {path!r} could not be imported ({type(err).__name__}: {err}); "
            "give package.module:function of an importable module"
        ) from None
    if not callable(fn):
        raise UserError(f"reward function {path!r} is not callable")
    return fn


def resolve_reward(choice: str, gold_reward: str | None, key: str = "method.reward") -> str | None:
    """What a method's `reward` knob names: None for the learned reward model ("model"), the
    dataset's gold scorer ("gold"), a registered name, or an import path `pkg.mod:fn`.

    Raises `ConfigError` naming `key` when the choice cannot be served.
    """
    from rlhf_exp.errors import ConfigError

    if choice == "model":
        return None
    name = gold_reward if choice == "gold" else choice
    if name is None:
        raise ConfigError(key, choice, "this dataset has no gold_reward; use model or a function")
    if ":" in name:
        try:
            get_reward(name)
        except UserError as err:
            raise ConfigError(key, name, str(err).split("; ", 1)[-1]) from None
        return name
    if name not in _REGISTRY:
        valid = ", ".join(["model", "gold", *reward_names()])
        raise ConfigError(
            key, name, f"choose one of {valid} (registered functions), or package.module:function"
        )
    return name


def reward_names() -> list[str]:
    """Registered reward function names, sorted."""
    return sorted(_REGISTRY)


# Imported last: gold.py registers itself through `register_reward`, defined above.
from rlhf_exp.rewards import gold  # noqa: E402, F401
