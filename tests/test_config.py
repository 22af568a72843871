"""Config composition and validation: every option composes, bad values fail in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_exp.config.schema import check_paths, validate
from rlhf_exp.errors import ConfigError
from rlhf_exp.runner import CONF_DIR

GROUPS = ["model", "dataset", "method", "lora", "logger", "arm", "experiment", "debug"]
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF_DIR / g).glob("*.yaml"))]
# Options that need a value the user must supply.
REQUIRED = {
    ("dataset", "files"): ["+dataset.data_files.preference=pairs.jsonl"],
    ("method", "eval"): ["policy_path=some/run/model"],
}


def test_every_group_has_options():
    assert {g for g, _ in OPTIONS} == set(GROUPS)


@pytest.mark.parametrize(("group", "option"), OPTIONS)
def test_every_option_composes_and_validates(compose_cfg, group, option):
    run = validate(compose_cfg(f"{group}={option}", *REQUIRED.get((group, option), [])))
    if group in ("model", "dataset", "method"):
        assert getattr(run, group).name == option
    if group == "arm":  # dpo_beta_0.1 -> method=dpo with beta=0.1
        method, knob, value = option.split("_")
        knob = str(getattr(run.method, type(run.method).KL_KNOB))
        assert run.method.name == method and knob == value
    if group == "lora":
        assert run.lora.enabled is (option == "default")
    if group == "debug":
        assert run.method.max_steps > 0 and run.upstream.sft.overrides["max_steps"] > 0


def test_defaults(compose_cfg):
    run = validate(compose_cfg())
    assert (run.method.name, run.model.name, run.dataset.name) == ("reward", "tiny", "sentiment")
    assert run.model.trust_remote_code is False and run.lora.enabled is False


BAD = [
    (["method.learning_rate=-0.001"], "method.learning_rate", "must be > 0"),
    (["method.learning_rate=fast"], "method.learning_rate", "expected float"),
    (["method.per_device_train_batch_size=0"], "method.per_device_train_batch_size", ">= 1"),
    (["method.lr_scheduler_type=zigzag"], "method.lr_scheduler_type", "choose one of"),
    (["+method.beta=0.1"], "method.beta", "unknown key"),
    (["lora=default", "lora.dropout=1.5"], "lora.dropout", "must be < 1"),
    (["lora=default", "lora.r=0"], "lora.r", ">= 1"),
    (["model.dtype=int8"], "model.dtype", "float32"),
    (["model.tiny.n_head=3"], "model.tiny.n_head", "must divide"),
    (["method.max_length=512"], "method.max_length", "n_positions"),
    (["dataset.source=ftp"], "dataset.source", "embedded"),
    (["dataset.test_fraction=1.0"], "dataset.test_fraction", "must be < 1"),
    (["dataset=files"], "dataset.data_files", "map at least one"),
    (["dataset=files", "+dataset.data_files.train=x.jsonl"], "dataset.data_files.train", "sft"),
    (["dataset=ultrafeedback", "dataset.hub_name=null"], "dataset.hub_name", "hub dataset"),
    (["+upstream.sft.overrides.beta=1"], "upstream.sft.overrides.beta", "unknown key"),
    (["+upstream.sft.overrides.max_steps=-5"], "upstream.sft.overrides.max_steps", ">= -1"),
    (["seed=one"], "seed", "expected int"),
    (["method=ppo", "+method.group_by_length=true"], "method.group_by_length", "sft, reward, dpo"),
    (["method=ppo", "+method.torch_compile=true"], "method.torch_compile", "sft, reward, dpo"),
]


@pytest.mark.parametrize(("overrides", "key", "valid"), BAD)
def test_bad_values_name_key_and_valid_range(compose_cfg, overrides, key, valid):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    message = str(err.value)
    assert err.value.key == key
    assert message.startswith(f"{key}=") and valid in message and "\n" not in message


def test_missing_paths_fail_before_loading(compose_cfg, tmp_path: Path):
    run = validate(
        compose_cfg("dataset=files", f"+dataset.data_files.preference={tmp_path}/no.jsonl")
    )
    with pytest.raises(ConfigError, match=r"dataset.data_files.preference=.*no such file"):
        check_paths(run)
    run = validate(compose_cfg(f"upstream.sft.path={tmp_path}/nowhere"))
    with pytest.raises(ConfigError, match=r"upstream.sft.path=.*not a directory"):
        check_paths(run)
