"""Online DPO (TRL's experimental OnlineDPOTrainer, rlhf_exp/methods/online_dpo.py): config,
end to end on the tiny model (`debug=fast`) with LoRA against the gold reward, and a run stopped
by SIGTERM and resumed that ends where an uninterrupted one does."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
import torch

from rlhf_exp.config.schema import validate
from rlhf_exp.context import stage_key, upstream_run
from rlhf_exp.errors import ConfigError
from rlhf_exp.training import CHECKPOINT_COMPLETE
from tests.conftest import run_cli
from tests.methods.logs import scalars
from tests.methods.test_online_rl import SHARED_KEYS
from tests.methods.weights import changed_tensors, load_weights, lora_targets
from tests.test_resume import _kill_after_first_checkpoint

SMALL = ("method.per_device_train_batch_size=8", "eval.num_prompts=16")


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_defaults_match_the_comparison_sampling_budget(compose_cfg):
    spec = validate(compose_cfg("method=online_dpo")).method
    ppo = validate(compose_cfg("method=ppo")).method
    # 60 steps x 16 prompts x 2 completions = PPO's 30 iterations x 64 prompts
    assert (
        spec.max_steps * spec.per_device_train_batch_size * 2
        == ppo.max_steps * ppo.rollout_batch_size
    )
    assert spec.max_completion_length == ppo.response_length
    assert (spec.beta, spec.loss_type, spec.reward) == (0.1, "sigmoid", "model")
    with pytest.raises(ConfigError, match="method.loss_type"):
        validate(compose_cfg("method=online_dpo", "method.loss_type=hinge"))
    with pytest.raises(ConfigError, match="method.trainer_kwargs.not_an_option"):
        validate(compose_cfg("method=online_dpo", "+method.trainer_kwargs.not_an_option=1"))


@pytest.mark.slow
def test_lora_against_gold_end_to_end(run_method):
    metrics, run_dir, run, cache = run_method(
        "method=online_dpo",
        "lora=default",
        "method.reward=gold",
        "method.max_steps=4",
        "method.save_steps=2",
        "method.eval_steps=2",
        "method.logging_steps=1",
        "method.learning_rate=1e-3",
        *SMALL,
    )
    assert metrics["train/global_step"] == 4 and metrics["train/generations"] == 4
    assert metrics["train/completions"] == 4 * 8 * 2 and metrics["knob"] == "beta=0.1"
    assert set(metrics) >= SHARED_KEYS - {"train/kl"}, SHARED_KEYS - set(metrics)
    assert all(math.isfinite(metrics[k]) for k in SHARED_KEYS - {"train/kl"})
    # k3's per-sample terms are >= 0 (k1's can sum below 0 while the KL is this small)
    assert metrics["eval/kl_k3"] > 0 and math.isfinite(metrics["eval/kl"])
    assert 0 <= metrics["eval/win_rate_gold"] <= 1
    assert metrics["throughput/generated_tokens"] >= 4 * 16  # at least one token each
    assert "train/objective/scores_margin" in metrics and "train/rewards/margins" in metrics
    # only the adapters trained; the reference is the adapters switched off
    sft = load_weights(cache.lookup("sft", stage_key(upstream_run(run, "sft"))) / "model")
    merged = load_weights(run_dir / "model")
    adapted = lora_targets(sft, run.model.lora_target_modules)
    assert adapted and changed_tensors(sft, merged) == adapted
    assert metrics["model/trainable_params"] < metrics["model/total_params"] / 2
    log = scalars(run_dir)
    assert len(log["eval/gold_reward"]) == 2 and len(log["train/objective/kl"]) == 4
    # step 1: the adapters start at zero, so the policy is its reference
    assert log["train/objective/kl"][0] == pytest.approx(0.0, abs=1e-4)
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert ckpts == ["checkpoint-2", "checkpoint-4"]
    assert "| prompt |" in (run_dir / "samples.md").read_text()


@pytest.mark.slow
def test_sigterm_then_resume_latest_matches_uninterrupted_run(
    tmp_path: Path, shared_cache: Path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        "method=online_dpo",
        "debug=fast",
        "method.reward=gold",
        "eval.reward_model=false",
        "method.max_steps=6",
        "method.save_steps=2",
        "method.eval_steps=100",
        f"paths.cache_dir={shared_cache}",
        *SMALL,
    ]
    straight = run_cli(*args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    run_dir = tmp_path / "killed"
    code, stderr = _kill_after_first_checkpoint(args, tmp_path, run_dir, signal.SIGTERM)
    assert code == 143 and "resume_from=latest" in stderr, stderr[-2000:]  # 128 + SIGTERM
    stopped = max(
        (run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])
    )
    assert (stopped / CHECKPOINT_COMPLETE).is_file() and int(stopped.name.split("-")[1]) < 6

    resumed = run_cli(
        *args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", "resume_from=latest"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train/global_step", "eval/gold_reward", "eval/kl", "eval/win_rate_gold"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
