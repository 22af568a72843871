"""The objective a sweeper optimises, and an Optuna search through run.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rlhf_exp.config.schema import ObjectiveSpec
from rlhf_exp.objective import ObjectiveMissing, objective_value
from tests.conftest import run_cli

METRICS = {"method": "dpo", "eval/gold_reward": 0.7, "eval/kl_k3": 14.0, "eval/kl": 13.0}


def test_no_metric_means_no_objective():
    assert objective_value(ObjectiveSpec(), METRICS) is None


def test_kl_beyond_the_budget_is_paid_for_and_within_it_is_free():
    within = ObjectiveSpec(metric="eval/gold_reward", kl_budget=20.0, kl_penalty=0.05)
    beyond = ObjectiveSpec(metric="eval/gold_reward", kl_budget=10.0, kl_penalty=0.05)
    assert objective_value(within, METRICS) == pytest.approx(0.7)
    assert objective_value(beyond, METRICS) == pytest.approx(0.7 - 0.05 * 4.0)


def test_a_missing_key_names_itself_and_the_keys_like_it():
    with pytest.raises(ObjectiveMissing) as err:
        objective_value(ObjectiveSpec(metric="eval/gold"), METRICS)
    line = str(err.value)
    assert "\n" not in line and "eval/gold is not a key" in line and "eval/gold_reward" in line
    with pytest.raises(ObjectiveMissing, match="not a number"):
        objective_value(ObjectiveSpec(metric="method"), METRICS)
    with pytest.raises(ObjectiveMissing, match="eval/kl_k3"):
        objective_value(
            ObjectiveSpec(metric="eval/gold_reward", kl_budget=1.0), {"eval/gold_reward": 1}
        )
    with pytest.raises(ObjectiveMissing, match="nan"):
        objective_value(ObjectiveSpec(metric="x/y"), {"x/y": math.nan})


@pytest.mark.slow
def test_an_objective_the_run_lacks_fails_it_and_keeps_its_results(tmp_path: Path, shared_cache):
    run_dir = tmp_path / "run"
    result = run_cli(
        "method=sft",
        "debug=fast",
        "method.max_steps=2",
        "objective.metric=eval/gold_reward",  # SFT evaluates no policy against a reference
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith("error: objective.metric: eval/gold")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["train/global_step"] == 2
    assert "eval/gold_reward is not a key" in metrics["error"]


@pytest.mark.slow
def test_optuna_search_runs_three_trials_and_reports_the_best(tmp_path: Path, shared_cache):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "hparams_search=dpo_optuna",
        "hydra.sweeper.n_trials=3",
        "debug=fast",
        "method.max_steps=4",
        "method.precompute_ref_log_probs=false",
        "dataset.n_eval_prompts=16",
        "eval.greedy=false",
        "eval.reward_model=false",
        "objective.kl_budget=0.5",  # low enough that 4 steps may exceed it
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    trials = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert len(trials) == 3 and all("status" not in t for t in trials)
    for t in trials:  # what each job returned to Optuna, from its own metrics
        penalty = 0.05 * max(0.0, t["eval/kl_k3"] - 0.5)
        assert t["objective"] == pytest.approx(t["eval/gold_reward"] - penalty)
    betas = {
        float(yaml.safe_load((p / "config.yaml").read_text())["method"]["beta"])
        for p in sweep.iterdir()
        if (p / "config.yaml").is_file()
    }
    assert len(betas) == 3 and all(0.02 <= b <= 1.0 for b in betas)  # sampled, log-uniform
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(t["objective"] for t in trials))
    assert set(best["best_params"]) == {"method.beta", "method.learning_rate"}
    assert (sweep / "comparison.md").is_file()
