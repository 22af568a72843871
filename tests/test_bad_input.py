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
    (
        ["method.max_steps=0"],
        "method.max_steps=0 is invalid: must be -1 (num_train_epochs decides) or at least 1",
    ),
    (
        ["method=ppo", "method.max_steps=0"],
        "method.max_steps=0 is invalid: must be -1 (num_train_epochs decides) or at least 1",
    ),
    (["method.warmup_ratio=1.5"], "method.warmup_ratio=1.5 is invalid: must be < 1"),
    (
        ["method.lr_scheduler_type=exponential"],
        "method.lr_scheduler_type='exponential' is invalid: choose one of linear, cosine, "
        "constant, constant_with_warmup",
    ),
    (["lora=default", "lora.dropout=2"], "lora.dropout=2.0 is invalid: must be < 1"),
    (
        ["model.dtype=float16"],
        "model.dtype='float16' is invalid: fp16 weights cannot be trained directly: use float32 "
        "(model.precision=bf16 or auto for speed), bfloat16, or LoRA on the fp16 base "
        "(lora=default)",
    ),
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
        ["eval.max_new_tokens=1000"],
        "eval.max_new_tokens=1000 is invalid: must be < model.tiny.n_positions=128 (room for "
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
        ["method=sft", "+method.trainer_kwargs.max_steps=3"],
        "method.trainer_kwargs.max_steps=3 is invalid: method.max_steps sets it; use "
        "method.max_steps",
    ),
    (
        ["+method.trainer_kwargs.learning_rate=-5"],
        "method.trainer_kwargs.learning_rate=-5 is invalid: method.learning_rate sets it; use "
        "method.learning_rate",
    ),
    (
        ["method=ppo", "method.reward=os:system"],
        "method.reward='os:system' is invalid: takes (command); a reward function takes "
        "(prompts, completions), two lists of str, and returns one float per completion",
    ),
    (
        ["method=ppo", "+method.trainer_kwargs.logging_first_step=true"],
        "method.trainer_kwargs={'logging_first_step': True} is invalid: method=ppo has no TRL "
        "config",
    ),
    (["eval.temperature=0"], "eval.temperature=0.0 is invalid: must be > 0"),
    (
        ["resume_from=/nonexistent/ckpt"],
        "resume_from='/nonexistent/ckpt' is invalid: does not exist; expected 'latest' or an "
        "existing checkpoint dir",
    ),
    (
        ["upstream.sft.path=/nonexistent/sft"],
        "upstream.sft.path='/nonexistent/sft' is invalid: does not exist; expected a saved model "
        "dir (with config.json)",
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
        "policy_path='/nonexistent/model' is invalid: does not exist; expected a saved model dir "
        "(with config.json)",
    ),
    (  # Hydra rejects it while composing (only method=eval has the key): run.py reports it
        ["method=sft", "policy_path=some/model"],
        "policy_path='some/model' is invalid: not a key of this config; check its spelling, or "
        "choose the group option that defines it",
    ),
    # Hydra: TypeError
    (["lora=[1,2]"], "lora=[1, 2] is invalid: choose one of default, none, qlora"),
    (  # without -m Hydra would run one job of the preset's defaults (method=reward)
        ["experiment=ppo_vs_dpo_quick"],
        "experiment=ppo_vs_dpo_quick is a sweep (hydra.sweeper.params: arm, seed): add -m to "
        "run it, or set arm and seed to run one of its jobs",
    ),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_exit_2_and_leaves_the_cache_alone(
    tmp_path: Path, args: list[str], expected: str
):
    result = run_cli(f"paths.root_dir={tmp_path}", *args)
    assert "Traceback" not in result.stdout + result.stderr
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing was built or cached
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"error: {expected}"


# ------------------------------------------------------------------------------------------
# The same contract for the cases of issue 18, in-process: `runner.main` as run.py calls it
# (and run.py's handling of what Hydra cannot compose), without a subprocess per case.
def _run_main(overrides: list[str], root: Path, capsys: pytest.CaptureFixture) -> list[str]:
    """stderr lines of `python run.py OVERRIDES` run in this process; asserts exit code 2."""
    from rlhf_exp.runner import main
    from tests.conftest import compose_config

    cfg = compose_config(overrides, root)
    with pytest.raises(SystemExit) as exit_:
        main(cfg)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    return err.strip().splitlines()


@pytest.fixture
def made(tmp_path: Path) -> dict[str, str]:
    """Paths the cases name: a plain file, model dirs with pickled weights, a checkpoint."""
    import torch

    plain = tmp_path / "plain.txt"
    plain.write_text("not a dir\n")
    out = {"file": str(plain)}
    for name, payload in (("benign", torch.zeros(2)), ("evil", print)):
        model = tmp_path / f"{name}_model"
        model.mkdir()
        (model / "config.json").write_text("{}")
        torch.save({"weight": torch.zeros(2), "x": payload}, model / "pytorch_model.bin")
        out[f"{name}_model"] = str(model)
    checkpoint = tmp_path / "checkpoint-10"
    checkpoint.mkdir()
    torch.save({"state": {}, "hook": print}, checkpoint / "optimizer.pt")
    (checkpoint / "COMPLETE").write_text("10\n")  # saved whole: its pickles are what is refused
    out["evil_checkpoint"] = str(checkpoint)
    return out


# (overrides, the line's start: "<key>=<value> is invalid: ", and what it says is valid)
FOUND = [
    (["seed=-1"], "seed=-1", "must be >= 0 (a seed is a 32-bit unsigned int)"),
    (["seed=1180591620717411303424"], "seed=1180591620717411303424", "must be <= 4294967295"),
    (["method.num_train_epochs=inf"], "method.num_train_epochs=inf", "must be a finite number"),
    (["method.weight_decay=inf"], "method.weight_decay=inf", "must be a finite number"),
    (["method.learning_rate=nan"], "method.learning_rate=nan", "must be a finite number"),
    (
        ["method=ppo", "method.missing_eos_penalty=inf"],
        "method.missing_eos_penalty=inf",
        "must be a finite number",
    ),
    (["method=dpo", "method.beta=inf"], "method.beta=inf", "must be a finite number"),
    (["eval.max_new_tokens=100000"], "eval.max_new_tokens=100000", "must be <= 65536"),
    (
        ["method=ppo", "method.rollout_batch_size=1000000000"],
        "method.rollout_batch_size=1000000000",
        "must be <= 65536",
    ),
    (
        ["model.tiny.n_positions=64"],
        "method.max_length=128",
        "must be <= model.tiny.n_positions=64",
    ),
    (["dataset.n_sft=1"], "dataset.n_sft=1", "must be >= 2 (one row to train on and one held"),
    (
        ["paths.cache_dir=/dev/null"],
        "paths.cache_dir='/dev/null'",
        "is a character device, not a regular file or directory; expected a directory",
    ),
    (["paths.cache_dir={file}"], "paths.cache_dir='{file}'", "is a file; expected a directory"),
    (["resume_from={file}"], "resume_from='{file}'", "is a file; expected 'latest' or an"),
    (
        ["resume_from={evil_checkpoint}"],
        "resume_from='{evil_checkpoint}'",
        "refused {evil_checkpoint}/optimizer.pt: it pickles builtins.print, not just tensors",
    ),
    (
        ["model.name_or_path={benign_model}"],
        "model.name_or_path='{benign_model}'",
        "its weights are a pickle (pytorch_model.bin) and no .safetensors: refused",
    ),
    (
        ["model.name_or_path={evil_model}", "model.allow_pickle_weights=true"],
        "model.name_or_path='{evil_model}'",
        "refused {evil_model}/pytorch_model.bin: it pickles builtins.print",
    ),
    (
        ["method=eval", "policy_path={file}"],
        "policy_path='{file}'",
        "is a file; expected a saved model dir",
    ),
    (
        ["dataset=files", "+dataset.data_files.preference=/dev/null"],
        "dataset.data_files.preference='/dev/null'",
        "is a character device",
    ),
]


@pytest.mark.parametrize(("args", "start", "valid"), FOUND, ids=[" ".join(a) for a, *_ in FOUND])
def test_found_cases_are_one_line_exit_2_and_build_nothing(
    tmp_path: Path, capsys, made, args: list[str], start: str, valid: str
):
    lines = _run_main([a.format(**made) for a in args], tmp_path, capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {start.format(**made)} is invalid: ")
    assert valid.format(**made) in lines[0]
    assert not (tmp_path / "outputs" / "cache").exists()


# Overrides Hydra cannot apply: run.py turns its error into the same one line.
COMPOSE = [
    (["lora=[1,2]"], "error: lora=[1, 2] is invalid: choose one of default, none, qlora"),
    (
        ["dataset=files", "+dataset.columns=[a,b]"],
        "error: dataset.columns=['a', 'b'] is invalid: expected a mapping, got a list",
    ),
    (["+seed=3"], "error: seed=3 is invalid: it is already a key of the config"),
]


@pytest.mark.parametrize(("args", "line"), COMPOSE, ids=[" ".join(a) for a, _ in COMPOSE])
def test_overrides_hydra_cannot_compose_are_one_line_exit_2(
    tmp_path: Path, capsys, monkeypatch, args: list[str], line: str
):
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_exp.config.overrides import run_reporting_bad_overrides
    from rlhf_exp.context import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def never_runs(cfg) -> None:
        raise AssertionError("composed a config that should have been refused")

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")  # restored after the test
    monkeypatch.setattr("sys.argv", ["run.py", f"paths.root_dir={tmp_path}", *args])
    try:
        with pytest.raises(SystemExit) as exit_:
            run_reporting_bad_overrides(never_runs, CONF_DIR)
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.strip().startswith(line), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_errors_inside_the_job_are_not_reported_as_bad_overrides(monkeypatch):
    from rlhf_exp.config.overrides import run_reporting_bad_overrides

    def run_job() -> None:  # Hydra's name for the frame that runs the task function
        raise RuntimeError("a bug")

    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    with pytest.raises(RuntimeError, match="a bug"):
        run_reporting_bad_overrides(run_job, Path("conf"))

    def callback_after_the_jobs() -> None:  # e.g. the comparison report of a sweep
        raise ValueError("not a command-line error")

    with pytest.raises(ValueError, match="not a command-line"):
        run_reporting_bad_overrides(callback_after_the_jobs, Path("conf"))


# Data that cannot train: refused before any stage trains, with a count and the knob.
def _pairs(path: Path, rows: list[dict[str, str]]) -> str:
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _data_cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    same = " ".join(["the film was long and slow"] * 6)
    ties = [{"prompt": f"Review {i}:", "chosen": " fine.", "rejected": " fine."} for i in range(40)]
    cut = [
        {"prompt": f"Review {i}:", "chosen": f"{same} great.", "rejected": f"{same} awful."}
        for i in range(40)
    ]
    one_text = [
        {"chosen": f"Review {i}: fine.", "rejected": f"Review {i}: fine."} for i in range(9)
    ]
    files = ["method=dpo", "dataset=files"]
    feedback = [{"prompt": f"Review {i}:", "completion": " fine.", "label": "no"} for i in range(9)]
    demos = [{"prompt": f"Review {i}:", "completion": " fine."} for i in range(9)]
    kto = [
        "method=kto",
        "dataset=files",
        f"+dataset.data_files.unpaired={_pairs(tmp / 'kto.jsonl', feedback)}",
    ]
    with_demos = [f"+dataset.data_files.sft={_pairs(tmp / 'demos.jsonl', demos)}"]
    return {
        "all ties": (
            [*files, f"+dataset.data_files.preference={_pairs(tmp / 'ties.jsonl', ties)}"],
            "error: dataset split 'pref_train': all 36 pairs have the same text as chosen and "
            "rejected: no preference for method=dpo to learn",
        ),
        "cutting leaves only ties": (
            [
                *files,
                f"+dataset.data_files.preference={_pairs(tmp / 'cut.jsonl', cut)}",
                "method.max_length=16",
                "method.max_completion_length=8",
            ],
            "error: dataset split 'pref_train': none of its 36 rows is usable (36 pairs have "
            "identical chosen and rejected after tokenising and cutting to the token budget); "
            "check the data, or raise method.max_length / method.max_completion_length",
        ),
        "one text, no prompt column": (
            [*files, f"+dataset.data_files.preference={_pairs(tmp / 'one.jsonl', one_text)}"],
            "error: dataset split 'preference': all 9 rows have the same text as chosen and "
            "rejected and no prompt column",
        ),
        "unpaired labels": (
            [*kto, *with_demos, "eval.reward_model=false"],
            "error: dataset split 'unpaired' row 0 column 'label' holds 'no'; expected true or "
            "false",
        ),
        "unpaired only, reward model for the evaluation": (
            kto,
            "error: dataset 'files' has no preference pairs to train the reward model that "
            "method=kto scores its evaluation with (eval.reward_model=true); set "
            "eval.reward_model=false, give it a preference split "
            "(+dataset.data_files.preference=<file>), or a trained reward model "
            "(upstream.reward.path=<dir>)",
        ),
        "unpaired only, no sft rows": (
            [*kto, "eval.reward_model=false"],
            "error: dataset 'files' has no sft rows (nor preference pairs) to train the SFT "
            "policy that method=kto stands on; give it an sft split "
            "(+dataset.data_files.sft=<file>) or a preference split "
            "(+dataset.data_files.preference=<file>), or a trained SFT policy "
            "(upstream.sft.path=<dir>)",
        ),
        "a gold margin no pair reaches": (
            ["method=dpo", "dataset.min_gold_margin=1.99", "dataset.n_pairs=200"],
            "error: dataset.min_gold_margin=1.99 is invalid: 0 of 1104 candidate pairs have "
            "gold scores that far apart (dataset.n_pairs=200 asked for); lower it",
        ),
    }


DATA_CASES = ["all ties", "cutting leaves only ties", "one text, no prompt column"]
DATA_CASES += ["a gold margin no pair reaches", "unpaired labels"]
DATA_CASES += ["unpaired only, reward model for the evaluation", "unpaired only, no sft rows"]


@pytest.mark.parametrize("case", DATA_CASES)
def test_data_that_cannot_train_is_refused_before_any_stage_trains(
    tmp_path: Path, capsys, case: str
):
    args, line = _data_cases(tmp_path)[case]
    lines = _run_main(["debug=fast", *args], tmp_path, capsys)
    # stderr also holds the progress bars of what ran first (tokenizer, loading): the report
    # itself is the one last line
    assert lines[-1].startswith(line), lines[-1]
    assert sum(ln.startswith("error:") for ln in lines) == 1
    assert not any("Traceback" in ln for ln in lines)
    cache = tmp_path / "outputs" / "cache"
    assert not any((cache / stage).exists() for stage in ("sft", "reward", "dpo", "kto")), [
        p.name for p in cache.iterdir()
    ]
