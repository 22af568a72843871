"""Reward functions behind one interface, looked up by name from the config.

A reward function takes the prompts and the completions of a batch and returns one float per
completion: `fn(prompts, completions) -> scores`. Gold scorers (ground truth an experiment is
judged by, e.g. `dataset.gold_reward: vader_sentiment`) register here by decorator:

    @register_reward("my_reward")
    def my_reward(prompts: list[str], completions: list[str]) -> list[float]: ...

`get_reward` hands every function out behind that contract (`CheckedReward`): a function that
cannot be called as `fn(prompts, completions)`, or whose result is not one finite real number
per completion, stops the run with one line naming it, the bad value and the completion.

Importing this package registers the built-ins. It stays light (no torch) so config
validation can check reward names before anything heavy loads.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Any

from rlhf_exp.errors import UserError

RewardFn = Callable[[list[str], list[str]], list[float]]

# What every message about a broken contract ends with: the fix.
CONTRACT = "a reward function takes (prompts, completions), two lists of str, and returns one "
CONTRACT += "float per completion"

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


def get_reward(name: str, key: str | None = None) -> CheckedReward:
    """The reward function registered as `name`, or at import path `package.module:function`
    (a function of your own, no registration needed), behind `CheckedReward`; an unknown name
    lists the valid ones. `key` is the config key that named it (`method.reward`), for messages.
    """
    label = f"{key}={name}" if key else f"reward function {name!r}"
    if ":" in name:
        fn = _import_reward(name)
    else:
        try:
            fn = _REGISTRY[name]
        except KeyError:
            registered = ", ".join(reward_names())
            raise UserError(
                f"reward function {name!r} is unknown; registered: {registered}"
            ) from None
    if (problem := _signature_problem(fn)) is not None:
        raise UserError(f"{label} {problem}; {CONTRACT}")
    return CheckedReward(fn, label)


class CheckedReward:
    """A user's or a registered reward function, called as `fn(prompts, completions)`, whose
    result must be one finite real number per completion: a list or tuple of numbers, or a 1-d
    numpy array or tensor. Anything else is a `UserError` naming `label`, the bad value's type
    and the completion; an exception raised inside a working function keeps its traceback."""

    def __init__(self, fn: RewardFn, label: str) -> None:
        self.fn, self.label = fn, label
        self.__name__ = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, prompts: list[str], completions: list[str]) -> list[float]:
        try:
            scores = self.fn(prompts, completions)
        except TypeError as err:
            # Raised by the call itself, not inside the function's own code (which would add a
            # frame): a callable whose signature `inspect` could not read took these wrongly.
            if err.__traceback__ is None or err.__traceback__.tb_next is not None:
                raise
            raise UserError(
                f"{self.label} cannot be called as fn(prompts, completions) ({err}); {CONTRACT}"
            ) from None
        return check_scores(scores, len(completions), self.label)

    def __repr__(self) -> str:
        return f"CheckedReward({self.label})"


def check_scores(scores: Any, n: int, label: str) -> list[float]:
    """`scores` as n floats, or a `UserError` saying what `label` returned instead."""
    fix = "it must return one float per completion"
    ndim = getattr(scores, "ndim", None)  # numpy arrays, torch tensors
    if isinstance(scores, (str, bytes, dict)) or ndim == 0 or not hasattr(scores, "__len__"):
        raise UserError(f"{label} returned {_describe(scores)} for {n} completions; {fix}")
    if ndim is not None and ndim != 1:
        shape = tuple(getattr(scores, "shape", ()))
        raise UserError(f"{label} returned an array of shape {shape} for {n} completions; {fix}")
    if len(scores) != n:
        got = f"{len(scores)} score" + ("" if len(scores) == 1 else "s")
        raise UserError(f"{label} returned {got} for {n} completions; {fix}")
    values = scores.tolist() if ndim is not None else list(scores)
    out = []
    for i, value in enumerate(values):
        if getattr(value, "ndim", None) == 0:  # a 0-d tensor or array in a list
            value = value.item()
        if not isinstance(value, numbers.Real):
            raise UserError(
                f"{label} returned {_describe(value)} for completion {i} (of {n}); {fix}"
            )
        value = float(value)
        if not math.isfinite(value):
            raise UserError(
                f"{label} returned {value} for completion {i} (of {n}); scores must be finite"
            )
        out.append(value)
    return out


def _describe(value: Any) -> str:
    """`str '0.5'`: the type and a short repr of a value that is not a score."""
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _signature_problem(fn: Any) -> str | None:
    """Why `fn` cannot be called as `fn(prompts, completions)`, or None (also when its
    signature cannot be read: `CheckedReward` then recognises a refused call)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        signature.bind(["prompt"], ["completion"])
    except TypeError:
        empty = inspect.Signature.empty
        names = [p.replace(annotation=empty, default=empty) for p in signature.parameters.values()]
        return f"takes {signature.replace(parameters=names, return_annotation=empty)}"
    return None


def _import_reward(path: str, key: str | None = None) -> RewardFn:
    """The object at `package.module:function`; `key`: refusals are `ConfigError`s of it."""
    import importlib

    from rlhf_exp.errors import ConfigError

    module_name, _, attr = path.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as err:
        valid = "give package.module:function of an importable module"
        if key is not None:
            raise ConfigError(key, path, valid) from None
        raise UserError(
            f"reward function {path!r} could not be imported ({type(err).__name__}: {err}); "
            + valid
        ) from None
    if not callable(fn):
        if key is not None:
            raise ConfigError(key, path, f"{type(fn).__name__} is not callable; {CONTRACT}")
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
    if ":" not in name and name not in _REGISTRY:
        valid = ", ".join(["model", "gold", *reward_names()])
        raise ConfigError(
            key, name, f"choose one of {valid} (registered functions), or package.module:function"
        )
    fn = _import_reward(name, key) if ":" in name else _REGISTRY[name]
    if (problem := _signature_problem(fn)) is not None:
        raise ConfigError(key, name, f"{problem}; {CONTRACT}")
    return name


def reward_names() -> list[str]:
    """Registered reward function names, sorted."""
    return sorted(_REGISTRY)


# Imported last: gold.py registers itself through `register_reward`, defined above.
from rlhf_exp.rewards import gold  # noqa: E402, F401
