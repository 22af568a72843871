"""Sharded training for real on two CPU processes, with the shipped accelerate configs:
FSDP2 (rlhf_exp/accelerate_configs/fsdp.yaml, launched through tests/fsdp_cpu.py: accelerate
shards on accelerators only, and torch's FSDP2 runs on gloo) and DeepSpeed ZeRO-2/3
(zero2.yaml, zero3.yaml: DeepSpeed's CPU accelerator, over gloo). Each method trains sharded,
gathers its weights to save them, evaluates, and agrees with the same run data parallel
(DDP); a PPO checkpoint written under one of them resumes under another."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import ROOT, run_cli
from tests.test_distributed import accelerate_cli, launch

CONFIGS = ROOT / "rlhf_exp" / "accelerate_configs"
DISTRIBUTED = {"fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}


def sharded_cli(
    tmp_path: Path, name: str, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <name>.yaml` on 2 CPU processes, sharding for real."""
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()) | {"num_processes": 2}
    script = [str(ROOT / "run.py")]
    if name == "fsdp":  # DeepSpeed runs on CPUs as configured; FSDP needs the shim
        config["use_cpu"] = True
        script = [str(ROOT / "tests" / "fsdp_cpu.py"), *script]
    path = tmp_path / f"{name}_cpu.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(path)]
    return launch([*command, *script, *args], timeout)


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
    "method, extra, backends",
    [
        # tied input and output embeddings: saved once. TRL's trainer under ZeRO-3 is DPO's
        # case, and a tied model saved from ZeRO-3 PPO's
        ("sft", [], ("fsdp",)),
        # TRL's precomputation reads the main process's temporary files (README). LoRA merged
        # from FSDP's slices is saved in the resume test below
        ("dpo", ["method.precompute_ref_log_probs=false", "lora=default"], ("zero3",)),
        # our loop: policy, critic, sharded frozen reference; minibatches of 32 rows in 8
        # micro-batches of 4 (256 tokens hold 4 rows here), as long prompts split them
        ("ppo", ["method.train_batch_tokens=256"], ("fsdp", "zero3")),
    ],
    ids=["sft", "dpo-lora", "ppo"],
)
def test_sharded_training_matches_data_parallel(
    method: str, extra: list[str], backends: tuple[str, ...], tmp_path: Path, shared_cache: Path
):
    common = _common(method, tmp_path, shared_cache, *extra)
    if method != "sft":  # one process first: it fills the cache with the upstream stages
        one = run_cli(*common, f"hydra.run.dir={tmp_path / 'one'}")
        assert one.returncode == 0, one.stderr[-2000:]
    ddp = accelerate_cli(*common, f"hydra.run.dir={tmp_path / 'ddp'}")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    replicated = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert replicated["run/distributed"] == "MULTI_CPU" and replicated["run/processes"] == 2
    reference = _weights(tmp_path / "ddp" / "model")
    if method != "sft":  # data parallel reports as one process does: gathered, one writer
        single = json.loads((tmp_path / "one" / "metrics.json").read_text())
        assert single["run/processes"] == 1 and set(replicated) == set(single)
        assert single["train/global_step"] == replicated["train/global_step"]
        events = [list((tmp_path / d / "tensorboard").glob("events.*")) for d in ("one", "ddp")]
        assert len(events[1]) == len(events[0]) > 0

    for backend in backends:
        run = sharded_cli(tmp_path, backend, *common, f"hydra.run.dir={tmp_path / backend}")
        assert run.returncode == 0, run.stderr[-3000:]
        sharded = json.loads((tmp_path / backend / "metrics.json").read_text())
        assert sharded["run/distributed"] == DISTRIBUTED[backend]
        assert sharded["train/global_step"] == replicated["train/global_step"] == 2
        assert set(sharded) == set(replicated)  # the same result shape
        # the same data and steps: the same training up to the order of float reductions
        assert sharded["train/loss"] == pytest.approx(replicated["train/loss"], rel=1e-4)
        # saved whole (tied weights once), loadable without accelerate, equal to DDP's
        whole = _weights(tmp_path / backend / "model")
        assert whole.keys() == reference.keys()
        for name, tensor in whole.items():
            torch.testing.assert_close(tensor, reference[name], atol=1e-5, rtol=0, msg=name)
        # and trained: not the weights it started from
        if method == "sft":
            assert sharded["eval/loss"] < sharded["eval/loss_initial"]
        else:
            log = (tmp_path / backend / "run.log").read_text()
            start = _weights(Path(re.search(r"cache: reusing sft (\S+)", log)[1]) / "model")
            assert any(not torch.equal(whole[n], start[n]) for n in whole)
        # the held-out evaluation (generation from the sharded or gathered policy): the same
        for key in ("eval/loss",) if method == "sft" else ("eval/gold_reward", "eval/kl"):
            assert sharded[key] == pytest.approx(replicated[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_ppo_checkpoint_resumes_under_another_backend_to_the_same_result(
    tmp_path: Path, shared_cache: Path
):
    """LoRA adapters and a value head, sharded by ZeRO-3: its checkpoint holds them whole
    (and Adam's state by name), so runs resumed from step 1 under FSDP and under ZeRO-2 end
    where the uninterrupted one did, and write the same step-2 checkpoint it wrote."""
    common = _common("ppo", tmp_path, shared_cache, "lora=default", "method.critic=value_head")
    _fill_cache(common, tmp_path)
    straight = sharded_cli(
        tmp_path, "zero3", *common, "method.save_steps=1", f"hydra.run.dir={tmp_path / 'a'}"
    )
    assert straight.returncode == 0, straight.stderr[-3000:]
    step1 = tmp_path / "a" / "checkpoints" / "step-000001"
    assert (step1 / "COMPLETE").is_file()
    expected = json.loads((tmp_path / "a" / "metrics.json").read_text())
    reference = _weights(tmp_path / "a" / "model")
    expected_state = _checkpoint(tmp_path / "a" / "checkpoints" / "step-000002")

    for backend in ("fsdp", "zero2"):
        run_dir = tmp_path / backend
        resumed = sharded_cli(
            tmp_path, backend, *common, f"resume_from={step1}", f"hydra.run.dir={run_dir}"
        )
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert f"resumed from {step1} at step 1" in (run_dir / "run.log").read_text()
        got = json.loads((run_dir / "metrics.json").read_text())
        assert got["run/distributed"] == DISTRIBUTED[backend]
        for key in ("train/loss", "objective/scores", "objective/kl", "eval/gold_reward"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-7), key
        for name, tensor in _weights(run_dir / "model").items():
            torch.testing.assert_close(tensor, reference[name], atol=1e-6, rtol=0, msg=name)
        state = _checkpoint(run_dir / "checkpoints" / "step-000002")
        assert state.keys() == expected_state.keys()
        for name, tensor in state.items():
            torch.testing.assert_close(tensor, expected_state[name], atol=1e-6, rtol=0, msg=name)


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A PPO checkpoint's trainable weights and Adam state, flat, by name."""
    out = {
        **load_file(str(path / "policy.safetensors")),
        **load_file(str(path / "critic.safetensors")),
    }
    optimizer = torch.load(path / "optimizer.pt", weights_only=True)
    for name, state in optimizer["state"].items():
        out |= {f"adam/{name}/{key}": value.float() for key, value in state.items()}
    (group,) = optimizer["param_groups"]
    out |= {f"adam/{key}": torch.tensor(group[key]) for key in ("lr", "eps", "weight_decay")}
    return out
