"""Same seed and config, same metrics: for every method on CPU, and whether its upstream stages
were trained in this run (a cold cache) or found in the cache (a warm one)."""

from __future__ import annotations

import pytest

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import validate
from rlhf_exp.runner import execute

SHORT = {
    "sft": ["method.max_steps=8"],
    "reward": ["method.max_steps=8"],
    "dpo": ["method.max_steps=8", "dataset.n_eval_prompts=16", "eval.reward_model=false"],
    "ppo": ["method.max_steps=3", "method.rollout_batch_size=32", "dataset.n_eval_prompts=16"],
}


def _comparable(metrics: dict) -> dict:
    return {
        k: v for k, v in metrics.items() if not k.startswith(("time/", "memory/", "throughput/"))
    }


# the cold run trains the upstream stages in its own cache: their length changes nothing here
UPSTREAM = ["upstream.sft.overrides.max_steps=5", "upstream.reward.overrides.max_steps=5"]


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(SHORT))
def test_same_seed_same_metrics_with_a_cold_or_warm_cache(compose_cfg, tmp_path, method):
    cache_dir = f"paths.cache_dir={tmp_path}/cache"
    run = validate(
        compose_cfg("debug=fast", f"method={method}", cache_dir, *UPSTREAM, *SHORT[method])
    )
    cache = ArtifactCache(tmp_path / "cache")
    cold = execute(run, tmp_path / "cold", cache)  # trains the upstream stages first
    warm = execute(run, tmp_path / "warm", cache)  # finds them in the cache
    assert _comparable(cold) == _comparable(warm)
