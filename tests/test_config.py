"""Config composition and validation: every option composes, bad values fail in one line."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from rlhf_exp.config.schema import check_paths, validate
from rlhf_exp.context import CONF_DIR
from rlhf_exp.errors import ConfigError

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
    if group == "arm":  # dpo_beta_0.1 -> method=dpo with beta=0.1; bon_n_4 -> best_of_n, n=4
        method, _, value = option.rsplit("_", 2)
        knob = str(getattr(run.method, type(run.method).KL_KNOB))
        assert run.method.name == {"bon": "best_of_n"}.get(method, method) and knob == value
    if group == "lora":
        assert run.lora.enabled is (option != "none")
    if group == "debug":
        assert run.method.max_steps > 0 and run.upstream.sft.overrides["max_steps"] > 0


# Presets that define a sweep (hydra.sweeper.params): each needs -m; the others are one run.
SWEEP_PRESETS = {
    "experiment": {
        "frontier": "arm, seed",
        "frontier_quick": "arm, seed",
        "methods": "arm, seed",
        "methods_quick": "arm, seed",
        "overoptimization": "dataset.n_labels, arm",
        "overoptimization_quick": "dataset.n_labels, arm",
        "overoptimization_small": "dataset.n_labels, arm",
        "ppo_vs_dpo": "arm, seed",
        "ppo_vs_dpo_quick": "arm, seed",
    },
    "hparams_search": {
        "dpo_optuna": "method.beta, method.learning_rate",
        "ppo_optuna": "method.kl_coef, method.learning_rate, method.cliprange",
    },
}
PRESETS = [(g, p.stem) for g in SWEEP_PRESETS for p in sorted((CONF_DIR / g).glob("*.yaml"))]


def _hydra_config(tmp_path: Path, *overrides: str, mode: str) -> Any:
    """The `hydra` node of `python run.py [-m] OVERRIDES`, as `HydraConfig.get()` gives it."""
    from hydra import compose, initialize_config_dir
    from hydra.types import RunMode

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"paths.root_dir={tmp_path}", *overrides], True)
    cfg.hydra.mode = RunMode[mode]  # what Hydra sets from -m (compose leaves it unset)
    return cfg.hydra


@pytest.mark.parametrize(("group", "option"), PRESETS)
def test_a_sweep_preset_without_m_is_refused_and_one_run_presets_run(tmp_path, group, option):
    from rlhf_exp.config.schema import check_run_mode
    from rlhf_exp.errors import UserError

    preset = f"{group}={option}"
    check_run_mode(_hydra_config(tmp_path, preset, mode="MULTIRUN"))  # -m: the sweep runs
    params = SWEEP_PRESETS[group].get(option)
    run = _hydra_config(tmp_path, preset, mode="RUN")
    if params is None:  # dpo_lora, reward_lora: one run
        check_run_mode(run)
        return
    with pytest.raises(UserError) as err:
        check_run_mode(run)
    keys = params.split(", ")
    swept = " and ".join(params.rsplit(", ", 1))  # arm and seed; a, b and c
    assert str(err.value) == (
        f"{preset} is a sweep (hydra.sweeper.params: {params}): add -m to run it, or set "
        f"{swept} to run one of its jobs"
    )
    # every swept key set on the command line: one job of the sweep, run as such
    one_job = [f"{k}={'ppo_kl_0.01' if k == 'arm' else 1}" for k in keys]
    check_run_mode(_hydra_config(tmp_path, preset, *one_job, mode="RUN"))


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
    with pytest.raises(ConfigError, match=r"upstream.sft.path=.*does not exist"):
        check_paths(run)


# One source of defaults: each group's default YAML and its dataclass say the same thing, so a
# value validated against the dataclass (upstream overrides, tests, notebooks) is the value a
# run uses. Keys the YAML takes from another group by interpolation are compared resolved.
def _defaults(cls) -> dict:
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = _defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


def _method_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml") if p.stem != "eval")


@pytest.mark.parametrize("method", _method_options())
def test_method_yaml_and_schema_defaults_agree(compose_cfg, method):
    from omegaconf import OmegaConf

    from rlhf_exp.config.schema import _method_specs

    yaml = OmegaConf.to_container(compose_cfg(f"method={method}").method, resolve=True)
    schema = _defaults(_method_specs()[method])
    drift = {k: (v, schema.get(k)) for k, v in yaml.items() if schema.get(k) != v}
    assert not drift, f"conf/method/{method}.yaml vs its schema (yaml, dataclass): {drift}"


def test_default_groups_and_schema_defaults_agree(compose_cfg):
    from omegaconf import OmegaConf

    from rlhf_exp.config.schema import DatasetSpec, EvalSpec, LoraSpec, ModelSpec, UpstreamSpec

    cfg = OmegaConf.to_container(compose_cfg(), resolve=True)
    pairs = {
        "model": ModelSpec,
        "dataset": DatasetSpec,
        "lora": LoraSpec,
        "eval": EvalSpec,
        "upstream": UpstreamSpec,
    }
    for group, cls in pairs.items():
        schema = _defaults(cls)
        drift = {k: (v, schema.get(k)) for k, v in cfg[group].items() if schema.get(k) != v}
        assert not drift, f"{group}: (yaml, dataclass) {drift}"


def test_trainer_kwargs_reach_the_trl_config_last(compose_cfg, tmp_path):
    from trl import SFTConfig

    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.context import RunContext
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.training import trl_config

    run = validate(
        compose_cfg(
            "method=sft",
            "+method.trainer_kwargs.logging_first_step=true",
            "+method.trainer_kwargs.dataloader_num_workers=1",  # beats the shared default
        )
    )
    tracker = Tracker(tmp_path, tensorboard=False, writes=False)
    ctx = RunContext(run, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker)
    args = trl_config(SFTConfig, run.method, ctx, max_length=run.method.max_length)
    assert args.logging_first_step is True and args.dataloader_num_workers == 1
    assert args.max_length == run.method.max_length


# What trainer_kwargs may still change of what rlhf-exp sets: defaults no knob reaches.
TRAINER_KWARGS_ALLOWED = {"disable_tqdm", "dataloader_num_workers", "dataloader_pin_memory"}
TRAINER_KWARGS_ALLOWED |= {"use_cpu"}


def test_trainer_kwargs_cannot_outrank_a_knob_or_what_rlhf_exp_fixes(compose_cfg, tmp_path):
    """Every option `trainer_args` sets is either a knob's (refused: `use <the knob>`), fixed
    by rlhf-exp (refused with the reason), or in TRAINER_KWARGS_ALLOWED: a new shared argument
    fails here until it is sorted into one of them."""
    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.context import RunContext
    from rlhf_exp.tracking import Tracker
    from rlhf_exp.training import trainer_args

    run = validate(compose_cfg("method=sft"))
    tracker = Tracker(tmp_path, tensorboard=False, writes=False)
    ctx = RunContext(run, tmp_path / "run", ArtifactCache(tmp_path / "cache"), tracker)
    refused = []
    for key in trainer_args(run.method, ctx):
        cfg = compose_cfg("method=sft", f"+method.trainer_kwargs.{key}=1")
        if key in TRAINER_KWARGS_ALLOWED:
            assert validate(cfg).method.trainer_kwargs == {key: 1}
            continue
        with pytest.raises(ConfigError, match=rf"^method.trainer_kwargs.{key}=1 is invalid: "):
            validate(cfg)
        refused.append(key)
    assert {"output_dir", "max_steps", "learning_rate", "seed", "bf16"} <= set(refused)


@pytest.mark.parametrize(
    ("overrides", "valid"),
    [
        (["method=sft", "+method.trainer_kwargs.max_steps=3"], "method.max_steps sets it; use "),
        (["method=dpo", "+method.trainer_kwargs.beta=0.5"], "method.beta sets it; use method.beta"),
        (
            ["method=grpo", "+method.trainer_kwargs.num_generations=2"],
            "method.num_generations sets it; use method.num_generations",
        ),
        (
            ["method=online_dpo", "+method.trainer_kwargs.max_new_tokens=8"],
            "method.max_completion_length sets it; use method.max_completion_length",
        ),
        (
            ["method=kto", "+method.trainer_kwargs.warmup_steps=3"],
            "method.warmup_ratio sets it; use method.warmup_ratio",
        ),
        (
            ["method=rloo", "+method.trainer_kwargs.gradient_checkpointing=true"],
            "model.gradient_checkpointing sets it; use model.gradient_checkpointing",
        ),
        (
            ["method=reward", "+method.trainer_kwargs.output_dir=/tmp/elsewhere"],
            "rlhf-exp checkpoints into <run dir>/checkpoints; choose the run dir with "
            "hydra.run.dir",
        ),
    ],
)
def test_trainer_kwargs_of_a_knob_are_refused_at_validation(compose_cfg, overrides, valid):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert str(err.value).split(" is invalid: ", 1)[1].startswith(valid)


def test_trainer_kwargs_reach_options_no_knob_sets(compose_cfg):
    spec = validate(compose_cfg("method=grpo", "+method.trainer_kwargs.top_p=0.9")).method
    assert spec.trainer_kwargs == {"top_p": 0.9}
    spec = validate(compose_cfg("method=dpo", "+method.trainer_kwargs.use_weighting=true")).method
    assert spec.trainer_kwargs == {"use_weighting": True}


def test_sweep_job_dirs_are_one_path_component_even_for_path_overrides():
    import yaml

    from rlhf_exp.config import path_safe

    assert path_safe("+dataset.data_files.preference=/data/hh/pairs.jsonl,seed=0") == (
        "+dataset.data_files.preference=_data_hh_pairs.jsonl,seed=0"
    )
    hydra = yaml.safe_load((CONF_DIR / "hydra" / "default.yaml").read_text())
    assert hydra["sweep"]["subdir"] == "${path_safe:${hydra.job.override_dirname}}"


@pytest.mark.parametrize(("steps", "ratio", "said"), [(1, 0.05, "nothing"), (20, 0.05, None)])
def test_a_run_that_is_all_warmup_is_warned_about(caplog, steps, ratio, said):
    from rlhf_exp.config.schema import method_spec
    from rlhf_exp.training import _warn_if_all_warmup

    caplog.set_level(logging.WARNING, logger="rlhf_exp.training")
    _warn_if_all_warmup(method_spec("sft", {"max_steps": steps, "warmup_ratio": ratio}))
    lines = [r.getMessage() for r in caplog.records if r.name == "rlhf_exp.training"]
    if said is None:  # ceil(0.05 x 20) = 1 warmup step of 20
        assert lines == []
    else:
        assert lines == [
            f"method.warmup_ratio={ratio:g} makes all {steps} steps warmup, which starts from "
            f"learning rate 0: this run trains {said}; set method.warmup_ratio=0 for runs this "
            "short"
        ]
