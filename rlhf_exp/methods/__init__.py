"""Method registry: a method name maps to `run(cfg, ctx) -> metrics` and the stages it needs.

Built-in methods register themselves on import (`@register("sft")`); `get_method` imports them
on first use so that `import rlhf_exp.methods` stays cheap. Methods never import each other: a
method that needs another stage's output asks `ctx.upstream(name)`, which goes through the
artifact cache and, on a miss, through this registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_exp.errors import ConfigError

if TYPE_CHECKING:
    from rlhf_exp.config.schema import RunConfig
    from rlhf_exp.runner import RunContext

RunFn = Callable[["RunConfig", "RunContext"], dict[str, Any]]
BUILTIN_MODULES = ("sft", "reward", "dpo", "ppo", "evaluate")


@dataclass(frozen=True)
class Method:
    name: str
    run: RunFn
    needs: tuple[str, ...]  # upstream stages, resolved before `run` starts
    produces_model: bool  # its `ctx.model_dir` is stored in the cache for later stages


_METHODS: dict[str, Method] = {}


def register(
    name: str, *, needs: tuple[str, ...] = (), produces_model: bool = True
) -> Callable[[RunFn], RunFn]:
    def decorator(fn: RunFn) -> RunFn:
        if name in _METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        _METHODS[name] = Method(name, fn, tuple(needs), produces_model)
        return fn

    return decorator


def _import_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")


def method_names() -> list[str]:
    _import_builtins()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _import_builtins()
    if name not in _METHODS:
        raise ConfigError("method", name, f"choose one of {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
