"""`method=eval`: the shared evaluation of a saved policy, here the SFT policy against itself,
where every comparison has a known answer (KL 0, win rate one half, equal scores)."""

from __future__ import annotations

import pytest

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import validate
from rlhf_exp.context import stage_key, upstream_run
from rlhf_exp.runner import execute


@pytest.mark.slow
def test_policy_against_itself_has_zero_kl_and_even_win_rate(run_method, compose_cfg, shared_cache):
    run = validate(compose_cfg("debug=fast", f"paths.cache_dir={shared_cache}"))
    cache = ArtifactCache(shared_cache)
    sft = upstream_run(run, "sft")  # the cache entry method=eval takes its reference from
    sft_dir = cache.get_or_build("sft", stage_key(sft), lambda tmp: execute(sft, tmp, cache))
    metrics, run_dir, _, _ = run_method("method=eval", f"policy_path={sft_dir}/model")
    assert metrics["method"] == "eval"
    assert metrics["eval/kl"] == pytest.approx(0.0, abs=1e-4)
    assert metrics["eval/win_rate_gold"] == 0.5 and metrics["eval/win_rate_rm"] == 0.5
    assert metrics["eval/gold_reward"] == metrics["eval/sft/gold_reward"]
    assert metrics["eval/gold_reward_gain"] == 0.0
    assert metrics["eval/sft/gold_reward_ci_low"] <= metrics["eval/sft/gold_reward"]
    assert 0 <= metrics["eval/distinct_2"] <= 1 and metrics["eval/length_mean"] > 0
    assert "| prompt |" in (run_dir / "samples.md").read_text()
    assert not (run_dir / "model").exists()  # evaluation writes no model


def test_a_reference_with_another_tokenizer_is_refused(tmp_path):
    from rlhf_exp.config.schema import TinySpec
    from rlhf_exp.models.tiny import build_tiny_base
    from tests.conftest import run_cli

    spec = TinySpec(n_layer=1, n_embd=32, n_head=2, vocab_size=300)
    policy, reference = tmp_path / "policy", tmp_path / "reference"
    build_tiny_base(spec, [f"the film number {i} was fine." for i in range(300)], policy)
    build_tiny_base(spec, [f"a song, take {i}, ran long." for i in range(300)], reference)
    result = run_cli(
        "method=eval",
        "debug=fast",
        "eval.reward_model=false",
        f"policy_path={policy}",
        f"reference_path={reference}",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip()
    assert line.startswith(f"error: reference_path={reference} has another tokenizer than ")
    assert line.endswith(
        "evaluate the policy against the model it was trained from, with reference_path=DIR"
    )
