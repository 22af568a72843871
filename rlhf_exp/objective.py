"""The single number a sweeper optimises (`objective.*` in conf/config.yaml).

Hydra's Optuna sweeper maximises or minimises what the task function returns; `run.py`
returns this, and `metrics.json` keeps it as `objective` so a report can be rebuilt from files.
With `kl_budget`, reward bought with KL beyond the budget is taken back at `kl_penalty` per nat:
a search over beta or a KL coefficient otherwise finds the least regularised setting.
"""

from __future__ import annotations

import difflib
import math
from typing import Any

from rlhf_exp.config.schema import ObjectiveSpec
from rlhf_exp.errors import UserError

# The non-negative (k3) estimate of KL(policy || SFT) on the held-out prompts; the sampled k1
# estimate can come out below zero, which would pay a run for diverging.
KL_KEY = "eval/kl_k3"


class ObjectiveMissing(UserError):
    """The run finished but lacks what its objective reads."""


def objective_value(spec: ObjectiveSpec, metrics: dict[str, Any]) -> float | None:
    """The objective of a finished run's `metrics`, or None when none is configured."""
    if spec.metric is None:
        return None
    value = _number(metrics, spec.metric, "objective.metric")
    if spec.kl_budget is not None:
        kl = _number(metrics, KL_KEY, "objective.kl_budget (it reads the eval KL)")
        value -= spec.kl_penalty * max(0.0, kl - spec.kl_budget)
    return value


def _number(metrics: dict[str, Any], key: str, setting: str) -> float:
    numeric = sorted(
        k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    )
    if key not in numeric:
        near = difflib.get_close_matches(key, numeric, n=5, cutoff=0.5) or numeric[:8]
        what = "is not a number in" if key in metrics else "is not a key of"
        raise ObjectiveMissing(
            f"{setting}: {key} {what} this {metrics.get('method', '?')} run's metrics.json "
            f"(numeric keys like it: {', '.join(near)}; {len(numeric)} in all)"
        )
    value = float(metrics[key])
    if not math.isfinite(value):
        raise ObjectiveMissing(f"{setting}: {key} is {value} in this run's metrics.json")
    return value
