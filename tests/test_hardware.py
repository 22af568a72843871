"""`model.precision=auto`: bf16 exactly where the machine multiplies bf16 natively."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_exp import hardware
from rlhf_exp.config.schema import validate

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile
bugs\t\t: spectre_v1
"""


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO)
    flags = {"fpu", "sse2", "avx2", "avx512f", "avx512_bf16", "amx_tile"}
    assert hardware.cpu_flags(cpuinfo) == flags
    assert hardware.cpu_flags(tmp_path / "missing") == set()  # macOS, Windows


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ({"avx2", "amx_bf16", "amx_tile"}, ("bf16", "CPU has amx_bf16")),
        ({"avx512f", "avx512_bf16"}, ("bf16", "CPU has avx512_bf16")),
        ({"avx2", "avx512f", "amx_tile"}, ("fp32", "no native bf16 on this machine")),
        (set(), ("fp32", "no native bf16 on this machine")),
    ],
)
def test_auto_precision_on_a_cpu_machine(monkeypatch, flags, expected):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert hardware.auto_precision(flags) == expected


@pytest.mark.parametrize(("native", "expected"), [("CPU has amx_bf16", "bf16"), (None, "fp32")])
def test_validate_settles_auto_for_this_machine(compose_cfg, monkeypatch, native, expected):
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: native)
    assert validate(compose_cfg("model.precision=auto")).model.precision == expected
    # an explicit choice is kept whatever the machine
    assert validate(compose_cfg("model.precision=fp32")).model.precision == "fp32"
    assert validate(compose_cfg("model.precision=bf16")).model.precision == "bf16"


@pytest.mark.parametrize("model", ["gpt2", "pythia-160m"])
def test_hub_models_default_to_auto(compose_cfg, monkeypatch, model):
    monkeypatch.setattr(hardware, "native_bf16", lambda flags=None: "CPU has amx_bf16")
    assert validate(compose_cfg(f"model={model}")).model.precision == "bf16"
    assert validate(compose_cfg()).model.precision == "fp32"  # the tiny default stays fp32


def test_a_rerun_with_other_threads_is_the_same_run():
    from rlhf_exp.runner import _same_run

    base = "method:\n  name: sft\nseed: 0\nthreads: null\n"
    assert _same_run(base, base.replace("threads: null", "threads: 1"))
    assert not _same_run(base, base.replace("seed: 0", "seed: 1"))


def test_a_local_sweep_runs_a_job_per_core_within_memory_and_one_on_a_gpu():
    from rlhf_exp.hardware import MEMORY_PER_JOB, sweep_jobs

    assert sweep_jobs({}, cpus=2, memory_bytes=24 * 2**30, cuda=False) == 2
    assert sweep_jobs({}, cpus=64, memory_bytes=24 * 2**30, cuda=False) == 6  # memory-bound
    assert sweep_jobs({}, cpus=2, memory_bytes=MEMORY_PER_JOB - 1, cuda=False) == 1
    assert sweep_jobs({}, cpus=8, memory_bytes=64 * 2**30, cuda=True) == 1
    assert sweep_jobs({"RLHF_EXP_SWEEP_JOBS": "3"}, cpus=2, memory_bytes=2**40, cuda=False) == 3


def test_evaluation_forwards_run_in_the_runs_precision():
    """`compute_precision` is what evaluation and reward-model scoring run under: bf16
    autocast for a bf16 run (results move a little, not a lot), plain fp32 otherwise."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=2, n_embd=64, vocab_size=100, num_labels=1, pad_token_id=0
    )
    model = GPT2ForSequenceClassification(config).eval()
    ids = torch.randint(1, 100, (4, 16))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with hardware.compute_precision("fp32"):
            fp32 = model(input_ids=ids).logits
        with hardware.compute_precision("bf16"):
            bf16 = model(input_ids=ids).logits
    assert fp32.dtype == torch.float32 and torch.equal(fp32, plain)
    assert bf16.dtype == torch.bfloat16
    assert not torch.equal(bf16.float(), plain)
    assert torch.allclose(bf16.float(), plain, atol=0.05, rtol=0.05)
