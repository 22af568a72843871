"""Reward model on the embedded task: held-out accuracy well above chance; LoRA keeps the
trunk; the upstream SFT policy is trained once and reused."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_exp.context import stage_key, upstream_run
from tests.cli_fork import start_cli
from tests.conftest import run_cli
from tests.methods.weights import changed_tensors, load_weights, lora_targets

pytestmark = pytest.mark.slow


def test_reward_model_learns_preferences(run_method, evaluation_steps):
    metrics, run_dir, _, _ = run_method("method=reward")
    # Measured on the fast preset (150 held-out pairs, 40 steps): 0.47 -> 0.89.
    assert metrics["eval/pairs"] >= 100
    assert metrics["eval/accuracy"] >= 0.75
    assert metrics["eval/accuracy"] > metrics["eval/accuracy_initial"] + 0.15
    assert metrics["eval/margin"] > 0
    assert (run_dir / "model" / "model.safetensors").is_file()
    # the reported loss is the last step's evaluation, not a second one after training
    steps = list(evaluation_steps.values())[-1]  # the method's own trainer
    assert steps[-1] == metrics["train/global_step"]
    assert len(set(steps)) == len(steps)


def test_reward_lora_trains_adapters_and_head_only(run_method):
    metrics, run_dir, run, cache = run_method("method=reward", "lora=default")
    assert metrics["eval/accuracy"] > metrics["eval/accuracy_initial"]
    sft_entry = cache.lookup("sft", stage_key(upstream_run(run, "sft")))
    assert sft_entry is not None  # trained by this run as its upstream, or reused
    sft = load_weights(sft_entry / "model")
    rm = load_weights(run_dir / "model")
    trunk = {name for name in sft if name.startswith("transformer.")}
    adapted = lora_targets(trunk, run.model.lora_target_modules)
    assert changed_tensors({n: sft[n] for n in trunk}, rm) == adapted
    assert "score.weight" in rm and "lm_head.weight" not in rm


def _sft_stores(output: str) -> int:
    return sum("cache: stored" in line and "/sft/" in line for line in output.splitlines())


def test_upstream_sft_trains_once_for_concurrent_runs(tmp_path: Path):
    args = ["method=reward", "debug=fast", f"paths.root_dir={tmp_path}", "method.max_steps=5"]
    jobs = [start_cli(*args) for _ in range(2)]  # a default run dir each (named to the microsecond)
    outputs = ["".join(job.communicate(timeout=600)) for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    assert sum(_sft_stores(out) for out in outputs) == 1, outputs
    assert len([p for p in (tmp_path / "outputs/cache/sft").iterdir() if p.is_dir()]) == 1

    again = run_cli(
        "method=reward", "debug=fast", f"paths.root_dir={tmp_path}", "method.max_steps=5"
    )
    assert again.returncode == 0
    assert _sft_stores(again.stdout + again.stderr) == 0
