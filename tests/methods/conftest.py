"""Run a method for real (tiny model, `debug=fast`) and hand back its metrics and run dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trl.trainer.utils as trl_utils
from transformers import Trainer

from rlhf_exp import lm_head
from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import RunConfig, validate
from rlhf_exp.runner import execute


@pytest.fixture
def run_method(compose_cfg, shared_cache: Path, tmp_path: Path) -> Callable[..., Any]:
    """`run_method("method=sft", ...)` -> (metrics, run_dir, run, cache) on the shared cache."""

    def run(*overrides: str) -> tuple[dict[str, Any], Path, RunConfig, ArtifactCache]:
        cfg = compose_cfg("debug=fast", f"paths.cache_dir={shared_cache}", *overrides)
        config = validate(cfg)
        cache = ArtifactCache(shared_cache)
        run_dir = tmp_path / "run"
        return execute(config, run_dir, cache), run_dir, config, cache

    return run


@pytest.fixture
def evaluation_steps(monkeypatch: pytest.MonkeyPatch) -> dict[Trainer, list[int]]:
    """The global step of every evaluation a transformers trainer runs in this test, per
    trainer, in the order they first evaluate (upstream stages first). Keyed by the trainer
    itself: an `id` could be reused once an upstream stage's trainer is freed."""
    steps: dict[Trainer, list[int]] = {}
    evaluate = Trainer.evaluate

    def counted(self: Trainer, *args: Any, **kwargs: Any) -> Any:
        steps.setdefault(self, []).append(self.state.global_step)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    return steps


@pytest.fixture
def trl_fused_head(monkeypatch: pytest.MonkeyPatch) -> Callable[[], bool]:
    """Resets TRL's fused LM head to its own choice of scored positions; the returned check
    says whether the runs since then set it to score only labelled positions on CPU."""
    monkeypatch.setattr(trl_utils, "_use_triton", lm_head._trl_use_triton)
    return lambda: trl_utils._use_triton is lm_head._compact_on_cpu
