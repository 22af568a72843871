"""Bad input through the real CLI: each is one line on stderr naming the key, the bad value and
what is valid; exit code 2; no traceback; nothing written to the artifact cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

SPLITS = "sft, sft_eval, preference, preference_test, eval_prompts, unpaired"
DPO_LOSSES = (
    "sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, apo_zero, "
    "apo_down, discopop, sigmoid_norm"
)
CASES = [
    (["method.learning_rate=-1"], "method.learning_rate=-1.0 is invalid: must be > 0"),
    (["method.learning_rate=abc"], "method.learning_rate='abc' is invalid: expected float"),
    (["seed=abc"], "seed='abc' is invalid: expected int"),
    (
        ["method.per_device_train_batch_size=0"],
        "method.per_device_train_batch_size=0 is invalid: must be >= 1",
    ),
    (
        ["method.gradient_accumulation_steps=0"],
        "method.gradient_accumulation_steps=0 is invalid: must be >= 1",
    ),
    (["method.max_steps=-5"], "method.max_steps=-5 is invalid: must be >= -1"),
    (["method.warmup_ratio=1.5"], "method.warmup_ratio=1.5 is invalid: must be < 1"),
    (
        ["method.lr_scheduler_type=exponential"],
        "method.lr_scheduler_type='exponential' is invalid: choose one of linear, cosine, "
        "constant, constant_with_warmup",
    ),
    (["lora=default", "lora.dropout=2"], "lora.dropout=2.0 is invalid: must be < 1"),
    (["lora=default", "lora.r=0"], "lora.r=0 is invalid: must be >= 1"),
    (
        ["lora=default", "model.lora_target_modules=[]"],
        "model.lora_target_modules=[] is invalid: list the modules LoRA wraps",
    ),
    (
        ["model.dtype=float8"],
        "model.dtype='float8' is invalid: choose one of float32, bfloat16, float16",
    ),
    (["model.precision=fp16"], "model.precision='fp16' is invalid: choose one of fp32, bf16, auto"),
    (["model.tiny.n_head=3"], "model.tiny.n_head=3 is invalid: must divide model.tiny.n_embd=128"),
    (
        ["method.max_length=4096"],
        "method.max_length=4096 is invalid: must be <= model.tiny.n_positions=128",
    ),
    (
        ["eval.max_new_tokens=100000"],
        "eval.max_new_tokens=100000 is invalid: must be < model.tiny.n_positions=128 (room for "
        "the prompt)",
    ),
    (
        ["method.max_completion_length=128"],
        "method.max_completion_length=128 is invalid: must be < method.max_length=128 (room "
        "for the prompt)",
    ),
    (
        ["model.name_or_path=/nonexistent/model"],
        "model.name_or_path='/nonexistent/model' is invalid: a local model dir or a hub id "
        "like 'gpt2'",
    ),
    (["dataset.test_fraction=0"], "dataset.test_fraction=0.0 is invalid: must be > 0"),
    (["dataset.n_eval_prompts=0"], "dataset.n_eval_prompts=0 is invalid: must be >= 1"),
    (
        ["dataset.source=ftp"],
        "dataset.source='ftp' is invalid: choose one of embedded, files, hub",
    ),
    (
        ["dataset=files", "+dataset.data_files.preference=/nonexistent/pairs.jsonl"],
        "dataset.data_files.preference='/nonexistent/pairs.jsonl' is invalid: no such file",
    ),
    (
        ["dataset=files"],
        f"dataset.data_files={{}} is invalid: map at least one of {SPLITS} to a file",
    ),
    (
        ["dataset=files", "+dataset.data_files.bogus=x.jsonl"],
        f"dataset.data_files.bogus='x.jsonl' is invalid: unknown split; valid: {SPLITS}",
    ),
    (["method=dpo", "method.beta=0"], "method.beta=0.0 is invalid: must be > 0"),
    (
        ["method=dpo", "method.loss_type=foo"],
        f"method.loss_type='foo' is invalid: choose one of {DPO_LOSSES}",
    ),
    (
        ["method=dpo", "method.label_smoothing=0.3"],
        "method.label_smoothing=0.3 is invalid: only loss_type in robust, exo_pair, aot reads "
        "it; set 0 for loss_type=sigmoid",
    ),
    (
        ["method=ppo", "method.rollout_batch_size=60"],
        "method.rollout_batch_size=60 is invalid: must be a multiple of "
        "per_device_train_batch_size x gradient_accumulation_steps = 32",
    ),
    (["method=ppo", "method.cliprange=0"], "method.cliprange=0.0 is invalid: must be > 0"),
    (
        ["method=ppo", "method.reward=no_such_reward"],
        "method.reward='no_such_reward' is invalid: choose one of model, gold, vader_sentiment "
        "(registered functions), or package.module:function",
    ),
    (
        ["method=ppo", "method.kl_estimator=k2"],
        "method.kl_estimator='k2' is invalid: choose one of k1, k3",
    ),
    (
        ["method=ppo", "method.reward=no_such_module:score"],
        "method.reward='no_such_module:score' is invalid: give package.module:function of an "
        "importable module",
    ),
    (
        ["+method.trainer_kwargs.no_such_option=1"],
        "method.trainer_kwargs.no_such_option=1 is invalid: not an option of TRL's RewardConfig",
    ),
    (
        ["method=ppo", "+method.trainer_kwargs.logging_first_step=true"],
        "method.trainer_kwargs={'logging_first_step': True} is invalid: method=ppo has no TRL "
        "config",
    ),
    (["eval.temperature=0"], "eval.temperature=0.0 is invalid: must be > 0"),
    (
        ["resume_from=/nonexistent/ckpt"],
        "resume_from='/nonexistent/ckpt' is invalid: 'latest' or an existing checkpoint dir",
    ),
    (
        ["upstream.sft.path=/nonexistent/sft"],
        "upstream.sft.path='/nonexistent/sft' is invalid: not a directory (a saved model dir)",
    ),
    (
        ["+upstream.sft.overrides.learning_rate=-1"],
        "upstream.sft.overrides.learning_rate=-1.0 is invalid: must be > 0",
    ),
    (
        ["method=eval"],
        "policy_path=None is invalid: method=eval needs policy_path=<a saved model dir>",
    ),
    (
        ["method=eval", "policy_path=/nonexistent/model"],
        "policy_path='/nonexistent/model' is invalid: a saved model dir (with config.json)",
    ),
    (["method=sft", "policy_path=some/model"], None),  # Hydra: only method=eval has the key
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_cache_alone(
    tmp_path: Path, args: list[str], expected: str | None
):
    result = run_cli(f"paths.root_dir={tmp_path}", *args)
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing was built or cached
    if expected is None:  # rejected by Hydra itself while composing: its own message
        assert result.returncode == 1 and "policy_path" in result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {expected}"
