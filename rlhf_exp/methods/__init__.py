"""Method registry: a method name maps to `run(cfg, ctx) -> metrics` and the stages it needs.

Every module of this package registers its methods on import (`@register("sft")`); `get_method`
imports them all on first use (discovered, not listed) so that `import rlhf_exp.methods` stays
cheap. A method's schema is a `TrainSpec` subclass in `rlhf_exp.config`, found the same way.
Methods never import each other: a method that needs another stage's output asks
`ctx.upstream(name)`, which goes through the artifact cache and, on a miss, this registry.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_exp.errors import ConfigError

if TYPE_CHECKING:
    from rlhf_exp.config.schema import RunConfig
    from rlhf_exp.context import RunContext

RunFn = Callable[["RunConfig", "RunContext"], dict[str, Any]]


# The upstream stages a method stands on: fixed, or decided by the run's config (e.g. the
# reward model only when the evaluation or the reward asks for it).
Needs = tuple[str, ...] | Callable[["RunConfig"], tuple[str, ...]]


@dataclass(frozen=True)
class Method:
    name: str
    run: RunFn
    needs: Needs  # upstream stages, resolved by the runner before `run` starts
    produces_model: bool  # its `ctx.model_dir` is stored in the cache for later stages

    def needs_for(self, run: RunConfig) -> tuple[str, ...]:
        return tuple(self.needs(run) if callable(self.needs) else self.needs)


def evaluation_needs(*stages: str) -> Callable[[RunConfig], tuple[str, ...]]:
    """`stages`, plus the reward model when the end-of-run evaluation scores with it."""
    return lambda run: (*stages, "reward") if run.eval.reward_model else tuple(stages)


_METHODS: dict[str, Method] = {}


def register(
    name: str, *, needs: Needs = (), produces_model: bool = True
) -> Callable[[RunFn], RunFn]:
    def decorator(fn: RunFn) -> RunFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        fixed = needs if callable(needs) else tuple(needs)
        _METHODS[name] = Method(name, fn, fixed, produces_model)
        return fn

    return decorator


def _import_builtins() -> None:
    """Import every module (or package) of this package: each registers its methods, so
    adding a method is adding a module, with no list to edit."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def method_names() -> list[str]:
    _import_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _import_builtins()
    if name not in _METHODS:
        raise ConfigError("method", name, f"choose one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
