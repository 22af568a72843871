"""GPU knobs, composed and checked on any machine: gradient checkpointing, the attention
kernel, a hub revision, QLoRA's 4-bit loading and the GPU's peak memory. Nothing here needs a
GPU, the network or a training run."""

from __future__ import annotations

import copy
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import peft
import pytest
import torch
from transformers import GPT2ForSequenceClassification

from rlhf_exp.config.schema import LoraSpec, ModelSpec, check_paths, validate
from rlhf_exp.errors import ConfigError
from rlhf_exp.memory import memory_metrics
from rlhf_exp.models import loading


@pytest.fixture
def cuda(monkeypatch):
    """Set whether this machine "has" a CUDA GPU: `cuda(False)`, `cuda(True)`."""
    return lambda available: monkeypatch.setattr(torch.cuda, "is_available", lambda: available)


def _one_line_error(call, key: str) -> str:
    with pytest.raises(ConfigError) as err:
        call()
    message = str(err.value)
    assert err.value.key == key and message.startswith(f"{key}=") and "\n" not in message
    return message


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (
            ["model.attn_implementation=flash_attention_2"],
            "model.attn_implementation",
            "flash attention 2 needs a CUDA GPU and flash-attn (pip install flash-attn)",
        ),
        (
            ["lora=qlora"],
            "model.load_in_4bit",
            "4-bit loading needs a CUDA GPU and bitsandbytes (pip install bitsandbytes)",
        ),
    ],
)
def test_cuda_only_knobs_stop_a_run_without_a_gpu(compose_cfg, cuda, overrides, key, says):
    cuda(False)
    run = validate(compose_cfg("model=gpt2", *overrides))  # the config itself is fine anywhere
    message = _one_line_error(lambda: check_paths(run), key)
    assert says in message and "this machine has no CUDA GPU" in message


def test_4bit_on_a_gpu_without_bitsandbytes_names_the_package(compose_cfg, cuda, monkeypatch):
    run = validate(compose_cfg("model=gpt2", "lora=qlora"))
    cuda(True)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not importable
    message = _one_line_error(lambda: check_paths(run), "model.load_in_4bit")
    assert message.endswith("bitsandbytes is not installed") and "no CUDA GPU" not in message


def test_flash_attention_in_fp32_is_refused_before_it_fails_mid_run(compose_cfg, cuda, monkeypatch):
    import importlib.machinery
    import types

    flash_attn = types.ModuleType("flash_attn")
    flash_attn.__spec__ = importlib.machinery.ModuleSpec("flash_attn", None)
    monkeypatch.setitem(sys.modules, "flash_attn", flash_attn)  # "installed"
    overrides = ["model=gpt2", "model.attn_implementation=flash_attention_2"]
    fp32 = validate(compose_cfg(*overrides, "model.precision=fp32"))
    bf16 = validate(compose_cfg(*overrides, "model.precision=bf16"))
    cuda(True)
    message = _one_line_error(lambda: check_paths(fp32), "model.attn_implementation")
    assert "bf16/fp16 only" in message and "model.precision=bf16" in message
    check_paths(bf16)  # a GPU, the package and bf16: nothing missing


def test_qlora_preset_is_lora_on_4bit_weights(compose_cfg):
    run = validate(compose_cfg("model=gpt2", "lora=qlora"))
    assert run.model.load_in_4bit and run.lora.enabled
    assert (run.lora.r, run.lora.alpha) == (16, 32.0)  # lora=default's


def test_4bit_without_lora_is_refused(compose_cfg):
    message = _one_line_error(
        lambda: validate(compose_cfg("model=gpt2", "model.load_in_4bit=true")), "model.load_in_4bit"
    )
    assert "cannot be trained directly" in message and "lora=qlora" in message


def test_revision_needs_a_hub_model(compose_cfg, tmp_path: Path, tiny_lm):
    message = _one_line_error(
        lambda: validate(compose_cfg("++model.revision=main")), "model.revision"
    )
    assert "only a hub model has revisions" in message
    tiny_lm[0].save_pretrained(tmp_path / "local")
    run = validate(
        compose_cfg("model=gpt2", f"model.name_or_path={tmp_path}/local", "model.revision=main")
    )
    assert "is a local dir" in _one_line_error(lambda: check_paths(run), "model.revision")


def test_attention_kernels_are_checked_by_name(compose_cfg):
    run = validate(compose_cfg("model=gpt2", "model.attn_implementation=sdpa"))
    assert run.model.attn_implementation == "sdpa"
    message = _one_line_error(
        lambda: validate(compose_cfg("model=gpt2", "model.attn_implementation=flash")),
        "model.attn_implementation",
    )
    assert "eager, sdpa, flash_attention_2" in message


# -------------------------------------------------------------------- what from_pretrained gets
def _fake_auto(calls: dict, kind: str, result) -> SimpleNamespace:
    def from_pretrained(source, **kwargs):
        calls[kind] = (source, kwargs)
        return copy.deepcopy(result)

    return SimpleNamespace(from_pretrained=from_pretrained)


def test_hub_revision_and_attention_reach_every_from_pretrained(monkeypatch, tiny_lm):
    model, tokenizer = tiny_lm
    config = copy.deepcopy(model.config)
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    calls: dict = {}
    monkeypatch.setattr(loading, "AutoTokenizer", _fake_auto(calls, "tokenizer", tokenizer))
    monkeypatch.setattr(loading, "AutoModelForCausalLM", _fake_auto(calls, "policy", model))
    reward = GPT2ForSequenceClassification(config)
    monkeypatch.setattr(
        loading, "AutoModelForSequenceClassification", _fake_auto(calls, "reward", reward)
    )
    spec = ModelSpec(
        name="gpt2", name_or_path="gpt2", revision="0123abc", attn_implementation="sdpa"
    )

    loaded = loading.load_tokenizer("gpt2", spec)
    loading.load_causal_lm("gpt2", spec, tokenizer=loaded)
    loading.load_reward_model("gpt2", spec, tokenizer=loaded)

    assert {kind: kwargs["revision"] for kind, (_, kwargs) in calls.items()} == {
        "tokenizer": "0123abc",
        "policy": "0123abc",
        "reward": "0123abc",
    }
    assert calls["policy"][1]["attn_implementation"] == "sdpa"
    assert calls["reward"][1]["attn_implementation"] == "sdpa"
    assert "attn_implementation" not in calls["tokenizer"][1]


def test_revision_is_part_of_every_stage_cache_key(compose_cfg):
    from rlhf_exp.context import stage_key

    main, pinned = (
        validate(compose_cfg("method=sft", "model=gpt2", f"model.revision={revision}"))
        for revision in ("main", "0123abc")
    )
    assert stage_key(main) != stage_key(pinned)
    assert stage_key(pinned)["model"]["revision"] == "0123abc"


def test_local_dirs_load_without_a_revision(monkeypatch, tiny_lm, tmp_path: Path):
    """Cached stages and saved runs are local dirs: the hub revision is not theirs."""
    tiny_lm[0].save_pretrained(tmp_path)
    seen: dict = {}
    real = loading.AutoModelForCausalLM.from_pretrained

    def spy(source, **kwargs):
        seen.update(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(loading, "AutoModelForCausalLM", SimpleNamespace(from_pretrained=spy))
    loading.load_causal_lm(str(tmp_path), ModelSpec(revision="0123abc"))
    assert "revision" not in seen


def test_4bit_loads_nf4_weights_made_trainable_by_peft(monkeypatch, tiny_lm):
    calls: dict = {}
    prepared: list = []
    monkeypatch.setattr(loading, "AutoModelForCausalLM", _fake_auto(calls, "policy", tiny_lm[0]))
    monkeypatch.setattr(
        peft,
        "prepare_model_for_kbit_training",
        lambda model, **kw: prepared.append(kw) or model,
    )
    spec = ModelSpec(name_or_path="gpt2", load_in_4bit=True, precision="bf16")
    loading.load_causal_lm("gpt2", spec)

    quant = calls["policy"][1]["quantization_config"]
    assert quant.load_in_4bit and quant.bnb_4bit_quant_type == "nf4"
    assert quant.bnb_4bit_use_double_quant and quant.bnb_4bit_compute_dtype == torch.bfloat16
    # checkpointing is the trainers' (and PPO's) to enable, from model.gradient_checkpointing
    assert prepared == [{"use_gradient_checkpointing": False}]
    assert "quantization_config" not in loading.model_kwargs(ModelSpec())


# ------------------------------------------------------------------------ gradient checkpointing
def test_trainers_get_gradient_checkpointing_from_the_model_group(compose_cfg, tmp_path: Path):
    from trl import RewardConfig

    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.context import RunContext
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.training import trl_config

    def args(*overrides: str) -> RewardConfig:
        run = validate(compose_cfg("model=gpt2", *overrides))
        tracker = Tracker(tmp_path, tensorboard=False, writes=False)
        ctx = RunContext(run, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker)
        with warnings.catch_warnings():
            # transformers' renamed argument: ours never warns
            warnings.simplefilter("error", FutureWarning)
            return trl_config(RewardConfig, run.method, ctx)

    assert args().gradient_checkpointing is True  # the 124M presets' default
    assert args("model.gradient_checkpointing=false").gradient_checkpointing is False
    # model.gradient_checkpointing is the one knob: trainer_kwargs may not outrank it under
    # either of transformers' names
    for name in ("gradient_checkpointing", "activation_checkpointing"):
        with pytest.raises(ConfigError, match="use model.gradient_checkpointing"):
            validate(compose_cfg("model=gpt2", f"+method.trainer_kwargs.{name}=false"))
    run = validate(compose_cfg("model=tiny"))
    assert run.model.gradient_checkpointing is False  # the tiny default: nothing to save


def _count_checkpointed(model: torch.nn.Module) -> list[int]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    calls: list[int] = []
    for layer in model.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            inner = layer._gradient_checkpointing_func

            def counted(*args, inner=inner, **kwargs):
                calls.append(1)
                return inner(*args, **kwargs)

            layer._gradient_checkpointing_func = counted
    return calls


def test_our_loop_checkpoints_a_model_kept_in_eval_mode(tiny_lm):
    """PPO keeps its models in eval mode (no dropout); checkpointing must still happen, give
    the same gradients, and stay out of generation (no gradients)."""
    plain = copy.deepcopy(tiny_lm[0]).eval()
    model = copy.deepcopy(plain)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no deprecated transformers entry point
        loading.enable_gradient_checkpointing(model)
    calls = _count_checkpointed(model)
    ids = torch.randint(0, 300, (2, 8))

    with torch.no_grad():
        model(ids)
    assert calls == []
    model(ids, labels=ids).loss.backward()
    plain(ids, labels=ids).loss.backward()

    assert len(calls) == model.config.n_layer
    assert not any(m.training for m in model.modules())  # dropout stayed off
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_checkpointing_under_lora_still_trains_the_adapters(tiny_lm):
    model = loading.apply_lora(
        copy.deepcopy(tiny_lm[0]).eval(),
        ModelSpec(),
        LoraSpec(enabled=True, r=2, alpha=4.0),
        "CAUSAL_LM",
    )
    loading.enable_gradient_checkpointing(model)
    calls = _count_checkpointed(model)
    ids = torch.randint(0, 300, (2, 8))
    model(input_ids=ids, labels=ids).loss.backward()
    assert calls
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora_b)


# ------------------------------------------------------------------------------- GPU memory
def test_metrics_record_the_gpu_peak_on_cuda(cuda, monkeypatch):
    cuda(True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    assert memory_metrics(512.04) == {"memory/peak_rss_mb": 512.0, "memory/peak_gpu_mb": 3072.0}


def test_metrics_have_no_gpu_peak_without_cuda(cuda):
    cuda(False)
    assert memory_metrics(512.0) == {"memory/peak_rss_mb": 512.0}
