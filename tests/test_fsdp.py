"""FSDP2 for real on two CPU processes: the shipped rlhf_exp/accelerate_configs/fsdp.yaml,
launched through tests/fsdp_cpu.py (accelerate shards on accelerators only; torch's FSDP2 runs
on gloo). Each method trains sharded, gathers its weights to save them, evaluates, and agrees
with the same run data parallel (DDP)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import ROOT, run_cli
from tests.test_distributed import accelerate_cli

FSDP_CONFIG = ROOT / "rlhf_exp" / "accelerate_configs" / "fsdp.yaml"


def fsdp_cli(tmp_path: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file fsdp.yaml` on 2 CPU processes, sharding for real."""
    config = yaml.safe_load(FSDP_CONFIG.read_text()) | {"num_processes": 2, "use_cpu": True}
    path = tmp_path / "fsdp_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    return subprocess.run(
        [*launch, str(ROOT / "tests" / "fsdp_cpu.py"), str(ROOT / "run.py"), *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir).state_dict()


def _common(method: str, tmp_path: Path, cache: Path, *extra: str) -> list[str]:
    return [
        f"method={method}",
        "debug=fast",
        "method.max_steps=2",
        "dataset.n_eval_prompts=8",
        *extra,
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={cache}",
    ]


def _fill_cache(common: list[str], tmp_path: Path) -> None:
    """One process first: it puts the upstream stages in the cache (README)."""
    fill = run_cli(*common, "method.max_steps=1", f"hydra.run.dir={tmp_path / 'fill'}")
    assert fill.returncode == 0, fill.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, extra",
    [
        ("sft", []),  # tied input and output embeddings: gathered and saved once
        # TRL's precomputation reads the main process's temporary files (README)
        ("dpo", ["method.precompute_ref_log_probs=false", "lora=default"]),
        ("ppo", []),  # our loop: policy, separate critic and a sharded frozen reference
    ],
    ids=["sft", "dpo-lora", "ppo"],
)
def test_fsdp_trains_saves_and_evaluates_as_data_parallel_does(
    method: str, extra: list[str], tmp_path: Path, shared_cache: Path
):
    common = _common(method, tmp_path, shared_cache, *extra)
    if method != "sft":
        _fill_cache(common, tmp_path)
    ddp = accelerate_cli(*common, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    fsdp = fsdp_cli(tmp_path, *common, f"hydra.run.dir={tmp_path / 'fsdp'}")
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]

    sharded = json.loads((tmp_path / "fsdp" / "metrics.json").read_text())
    replicated = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert sharded["run/distributed"] == "FSDP" and replicated["run/distributed"] == "MULTI_CPU"
    assert sharded["train/global_step"] == replicated["train/global_step"] == 2
    assert set(sharded) == set(replicated)  # the same result shape
    # the same data and steps: the same training up to the order of float reductions
    assert sharded["train/loss"] == pytest.approx(replicated["train/loss"], rel=1e-4)
    # saved whole (tied weights once), loadable without accelerate, equal to DDP's
    whole, reference = _weights(tmp_path / "fsdp" / "model"), _weights(tmp_path / "ddp" / "model")
    assert whole.keys() == reference.keys()
    for name, tensor in whole.items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=0, msg=name)
    # and trained: not the weights it started from
    if method == "sft":
        assert sharded["eval/loss"] < sharded["eval/loss_initial"]
    else:
        log = (tmp_path / "fsdp" / "run.log").read_text()
        start = _weights(Path(re.search(r"cache: reusing sft (\S+)", log)[1]) / "model")
        assert any(not torch.equal(whole[n], start[n]) for n in whole)
    # the held-out evaluation (generation from the sharded or gathered policy): the same
    for key in ("eval/loss",) if method == "sft" else ("eval/gold_reward", "eval/kl"):
        assert sharded[key] == pytest.approx(replicated[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_fsdp_ppo_resumes_from_its_checkpoint_to_the_same_result(
    tmp_path: Path, shared_cache: Path
):
    """LoRA adapters and a value head, sharded: the checkpoint holds them whole (and Adam's
    state by name); a run resumed from step 1 ends where the uninterrupted one did."""
    common = _common("ppo", tmp_path, shared_cache, "lora=default", "method.critic=value_head")
    _fill_cache(common, tmp_path)
    straight = fsdp_cli(tmp_path, *common, "method.save_steps=1", f"hydra.run.dir={tmp_path / 'a'}")
    assert straight.returncode == 0, straight.stderr[-3000:]
    step1 = tmp_path / "a" / "checkpoints" / "step-000001"
    assert (step1 / "COMPLETE").is_file()
    resumed = fsdp_cli(tmp_path, *common, f"resume_from={step1}", f"hydra.run.dir={tmp_path / 'b'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {step1} at step 1" in (tmp_path / "b" / "run.log").read_text()

    expected = json.loads((tmp_path / "a" / "metrics.json").read_text())
    got = json.loads((tmp_path / "b" / "metrics.json").read_text())
    for key in ("train/loss", "objective/scores", "objective/kl", "eval/gold_reward"):
        assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
    whole, reference = _weights(tmp_path / "b" / "model"), _weights(tmp_path / "a" / "model")
    for name, tensor in whole.items():
        torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=0, msg=name)
