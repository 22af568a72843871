"""Every key of every schema, walked: values outside a key's type or range are a `ConfigError`
naming that key, by the rules of its type and its field metadata (config/schema.py).

The keys are found by reflection (every dataclass reachable from `RunConfig`, every method
schema `_method_specs()` finds, and the upstream stages' `overrides`), so a key added later is
covered without new test code. Each bad value goes through `validate`, as a run's would.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from rlhf_exp.config.schema import (
    RunConfig,
    TrainSpec,
    _method_specs,
    field_rules,
    type_rules,
    validate,
)
from rlhf_exp.errors import ConfigError
from tests.conftest import compose_config

STAGES = ("sft", "reward")  # upstream stages whose method keys `upstream.<stage>.overrides` take


def _base(tp: Any) -> tuple[Any, bool]:
    """(the type inside `X | None`, whether None is allowed)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else tp), type(None) in typing.get_args(tp)
    return tp, False


def _leaves(cls: type, prefix: str) -> list[tuple[str, type, str, Any]]:
    """(key, owning class, field name, leaf type) of every scalar field under `cls`."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, _ = _base(hints[f.name])
        key = f"{prefix}.{f.name}" if prefix else f.name
        if tp is TrainSpec:  # walked per method below
            continue
        if dataclasses.is_dataclass(tp):
            out += _leaves(tp, key)
        elif tp in (int, float, bool, str):
            out.append((key, cls, f.name, tp))
    return out


def _walk() -> list[tuple[str, type, str, Any]]:
    leaves = _leaves(RunConfig, "")
    for name, spec in _method_specs().items():
        leaves += [(k, c, n, t) for k, c, n, t in _leaves(spec, f"method[{name}]") if n != "name"]
    for stage in STAGES:
        spec = _method_specs()[stage]
        prefix = f"upstream.{stage}.overrides"
        leaves += [(k, c, n, t) for k, c, n, t in _leaves(spec, prefix) if n != "name"]
    return leaves


def _bad_values(cls: type, name: str, tp: Any) -> list[Any]:
    """Values the rules of field `name` (its metadata and its type's) must reject."""
    rules = field_rules(cls, name)
    if tp is bool:
        return ["yes", 2, [True]]
    if tp is str:
        return [[1], {"a": 1}, 3] + (["no-such-choice"] if "choices" in rules else [])
    bad: list[Any] = ["abc", [1], {"a": 1}, True]
    if tp is float:
        bad += [math.nan] + ([] if rules.get("allow_inf") else [math.inf, -math.inf])
        bad += [10**400]  # an int no float holds
    if tp is int:
        bad += [1.5, 2**70, -(2**70)]
        rules = type_rules(0, rules)  # int32's bounds where the field sets none of its own
    step = 1
    for rule, out_of_range in (
        ("gt", lambda b: b),
        ("ge", lambda b: b - step),
        ("lt", lambda b: b),
        ("le", lambda b: b + step),
    ):
        if rule in rules:
            bad.append(tp(out_of_range(rules[rule])))
    return bad


def _set(data: dict, key: str, value: Any) -> str:
    """Put `value` at `key` of the composed config; returns the key an error must name."""
    if key.startswith("method["):  # method[dpo].beta: that method's schema, its defaults
        method, _, field_name = key[len("method[") :].partition("].")
        data["method"] = {"name": method, field_name: value}
        if method == "eval":
            data["policy_path"] = "unused"
        return f"method.{field_name}"
    node = data
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return key


@pytest.fixture(scope="module")
def composed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cfg = compose_config([], tmp_path_factory.mktemp("walk"))
    return OmegaConf.to_container(cfg, resolve=True)


LEAVES = _walk()
NUMERIC = [leaf for leaf in LEAVES if leaf[3] in (int, float)]


def test_the_walk_reaches_every_group_and_method():
    keys = {key for key, *_ in LEAVES}
    assert len(NUMERIC) > 200, len(NUMERIC)  # 247 numeric keys when this was written
    for expected in (
        "seed",
        "model.tiny.n_positions",
        "dataset.min_gold_margin",
        "upstream.seed",
        "eval.max_new_tokens",
        "lora.alpha",
        "method[ppo].rollout_batch_size",
        "method[dpo].beta",
        "upstream.reward.overrides.max_length",
    ):
        assert expected in keys, expected
    assert {k.partition("]")[0] for k in keys if k.startswith("method[")} == {
        f"method[{name}" for name in _method_specs()
    }


def test_defaults_of_every_method_validate(composed):
    for name in _method_specs():
        data = copy.deepcopy(composed)
        _set(data, f"method[{name}].name", name)
        validate(data)


@pytest.mark.parametrize(("key", "owner", "name", "tp"), LEAVES, ids=[leaf[0] for leaf in LEAVES])
def test_values_outside_type_or_range_name_the_key(composed, key, owner, name, tp):
    for value in _bad_values(owner, name, tp):
        data = copy.deepcopy(composed)
        expected_key = _set(data, key, value)
        with pytest.raises(ConfigError) as err:
            validate(data)
        assert err.value.key == expected_key, (value, str(err.value))
        message = str(err.value)
        assert message.startswith(f"{expected_key}=") and "\n" not in message


def test_every_numeric_key_has_an_upper_bound():
    """Ints by their own `le`/`lt` or int32's, floats by being finite: no value is unbounded."""
    for key, owner, name, tp in NUMERIC:
        rules = field_rules(owner, name)
        if tp is int:
            assert "le" in type_rules(0, rules) or "lt" in rules, key
        else:
            assert not rules.get("allow_inf") or "le" in rules or "lt" in rules, key


def test_paths_expand_the_home_dir(composed, tmp_path):
    data = copy.deepcopy(composed)
    data["upstream"]["sft"]["path"] = "~/sft-policy"
    data["resume_from"] = "~/ckpt"
    run = validate(data)
    home = str(Path("~").expanduser())
    assert run.upstream.sft.path == f"{home}/sft-policy" and run.resume_from == f"{home}/ckpt"
    data["resume_from"] = "latest"
    assert validate(data).resume_from == "latest"
