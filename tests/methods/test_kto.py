"""KTO: pairs become labelled rows on one side of the split, KL rows rotate within batches, the
loss weights balance the labels; end to end on the tiny model it moves away from the SFT
policy the right way, LoRA trains only adapters, an unpaired file trains, a SIGTERM'd run
resumes to the same result, and a bad batch size is one line with exit code 2."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import pytest
from datasets import Dataset

from rlhf_exp.config.schema import DatasetSpec
from rlhf_exp.context import stage_key, upstream_run
from rlhf_exp.data import load_task
from rlhf_exp.data.formats import normalize_unpaired
from rlhf_exp.data.loading import split_unpaired
from rlhf_exp.data.tokens import TokenBudget, tokenize_split
from rlhf_exp.errors import UserError
from rlhf_exp.methods.kto import loss_weights, unpair, with_kl_completions
from tests.conftest import run_cli
from tests.methods.logs import scalars
from tests.methods.weights import changed_tensors, load_weights, lora_targets
from tests.test_resume import _complete_checkpoints, _kill_after_first_checkpoint


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ------------------------------------------------------------------------ fast unit tests
def test_pairs_become_a_desirable_and_an_undesirable_row_on_one_side(tmp_path: Path, tiny_lm):
    _, tokenizer = tiny_lm
    pairs = [
        {"prompt": f"the film number {i} was", "chosen": " fine.", "rejected": " fine and then"}
        for i in range(10)
    ]
    spec = DatasetSpec(
        source="files", data_files={"preference": str(_write(tmp_path / "p.jsonl", pairs))}
    )
    spec.test_fraction = 0.3
    task = load_task(spec, tokenizer, tmp_path / "cache")
    sides = {}
    for name, part in (("train", task.pref_train), ("test", task.pref_test)):
        tokenized = tokenize_split(part, "preference", tokenizer, TokenBudget(32, 8)).dataset
        rows = unpair(tokenized)
        assert len(rows) == 2 * len(tokenized)
        for i, pair in enumerate(tokenized):  # each pair: desirable chosen, undesirable rejected
            good, bad = rows[2 * i], rows[2 * i + 1]
            assert (good["label"], bad["label"]) == (True, False)
            assert good["prompt_ids"] == bad["prompt_ids"] == pair["prompt_ids"]
            assert (good["completion_ids"], bad["completion_ids"]) == (
                pair["chosen_ids"],
                pair["rejected_ids"],
            )
        sides[name] = {tuple(p) for p in rows["prompt_ids"]}
    assert sides["train"] and sides["test"] and not sides["train"] & sides["test"]


def test_kl_rows_rotate_within_each_batch_and_fit_the_budget():
    rows = Dataset.from_dict(
        {
            "prompt_ids": [[1, 1, 1], [2], [3], [4], [5]],
            "completion_ids": [[10], [20, 21, 22, 23], [30], [40], [50]],
            "label": [True, False, True, False, True],
        }
    )
    kl = with_kl_completions(rows, batch_size=2, max_length=5)["KL_completion_ids"]
    # batches [0, 1], [2, 3], [4]: each row takes the previous row's completion in its batch;
    # row 0's prompt of 3 leaves room for 2 of row 1's 4 tokens
    assert kl == [[20, 21], [10], [40], [30], [50]]


def test_loss_weights_balance_the_labels():
    assert loss_weights(50, 50, None, None) == (1.0, 1.0)  # pairs: nothing to correct
    w_d, w_u = loss_weights(10, 30, None, None)
    assert w_d * 10 == pytest.approx(w_u * 30)  # the KTO paper's Eq. 8 ratio is 1
    assert (w_d * 10 + w_u * 30) / 40 == pytest.approx(1.0)  # same mean weight per row
    assert loss_weights(10, 30, None, 1.0) == pytest.approx((3.0, 1.0))
    assert loss_weights(10, 30, 0.5, None) == pytest.approx((0.5, 0.5 / 3))
    assert loss_weights(10, 30, 2.0, 0.7) == (2.0, 0.7)  # both given: used as they are


def test_unpaired_rows_need_a_bool_label():
    rows = [
        {"q": "The film", "completion": " was great.", "label": True},
        {"q": "The film", "completion": " was dull.", "label": False},
    ]
    out = normalize_unpaired(Dataset.from_list(rows), None, {"q": "prompt"})
    assert out.to_list() == [
        {"prompt": r["q"], **{k: r[k] for k in ("completion", "label")}} for r in rows
    ]
    with pytest.raises(UserError, match="row 0 column 'label' holds 'yes'; expected true or false"):
        normalize_unpaired(Dataset.from_list([{**rows[0], "label": "yes"}]), None, {"q": "prompt"})
    with pytest.raises(UserError, match=r"expected prompt/completion/label"):
        normalize_unpaired(Dataset.from_list([{"prompt": "a", "completion": "b"}]), None, {})


def test_unpaired_evaluation_prompts_are_not_kto_training_prompts(tmp_path: Path, caplog):
    """Unpaired feedback and SFT demonstrations over the same prompts: the evaluation prompts
    (held-out SFT prompts) and the held-out unpaired rows are prompts KTO and SFT never train
    on."""
    n = 60
    feedback = [
        {"prompt": f"Review {i}: the film", "completion": f" was {word}.", "label": good}
        for i in range(n)
        for word, good in (("warm", True), ("dull", False))
    ]
    demos = [{"prompt": f"Review {i}: the film", "completion": " was warm."} for i in range(n)]
    files = {
        "sft": str(_write(tmp_path / "demos.jsonl", demos)),
        "unpaired": str(_write(tmp_path / "feedback.jsonl", feedback)),
    }
    data = DatasetSpec(source="files", data_files=files, test_fraction=0.2, n_eval_prompts=8)
    task = load_task(data, None, tmp_path / "cache")
    rows = normalize_unpaired(Dataset.from_list(feedback), None, {})
    with caplog.at_level("INFO", logger="rlhf_exp.data.loading"):
        train, test = split_unpaired(rows, task, data.test_fraction, data.seed)
    trained = set(train["prompt"]) | set(task.sft_train["prompt"])
    assert len(task.eval_prompts) == 8 and not set(task.eval_prompts["prompt"]) & trained
    assert not set(test["prompt"]) & trained
    assert set(test["prompt"]) == set(task.sft_eval["prompt"])
    assert len(train) + len(test) == len(feedback)
    assert "dataset split 'unpaired': 24 rows held out and 96 kept for training" in caplog.text


def test_batch_of_one_is_one_line_exit_2(tmp_path: Path):
    result = run_cli(
        f"paths.root_dir={tmp_path}", "method=kto", "method.per_device_train_batch_size=1"
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == (
        "error: method.per_device_train_batch_size=1 is invalid: must be >= 2 for KTO: its KL "
        "reference point is estimated from the other rows of each micro-batch (with 1 row it "
        "would equal the row's own reward)"
    )
    assert not (tmp_path / "outputs" / "cache").exists()  # nothing loaded or trained


# ---------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_kto_moves_the_sft_policy_towards_desirable_completions(run_method):
    metrics, run_dir, run, cache = run_method(
        "method=kto",
        "method.max_steps=20",
        "method.learning_rate=1e-3",  # 20 steps instead of the default's full epoch
        # Precomputing scores all 5,700 training rows, far more than 20 steps see; this runs
        # the frozen reference copy (the resume test below too; test_unpaired_file_trains
        # precomputes).
        "method.precompute_ref_log_probs=false",
    )
    assert metrics["train/global_step"] == 20 and metrics["knob"] == "beta=0.1"
    assert (
        metrics["train/rows"]
        == 2 * metrics["data/pref_train/rows"] - 2 * metrics["data/pref_train/dropped_ties"]
    )
    assert metrics["method/desirable_weight"] == metrics["method/undesirable_weight"] == 1.0
    # At the SFT policy every row's loss is exactly 0.5 (1 - sigmoid(0), weights 1). Measured
    # with this config, seed 0: held-out loss 0.472, margin 0.45, gold 0.162 -> 0.477.
    assert metrics["eval/loss"] < 0.49
    assert metrics["eval/rewards_margins"] > 0.2
    assert metrics["eval/gold_reward_gain"] >= 0.1 and metrics["eval/win_rate_gold"] > 0.5
    logged = scalars(run_dir)
    assert {"train/loss", "train/kl_reference_point", "eval/rewards/margins"} <= set(logged)
    # the shared evaluation, against the SFT policy
    assert metrics["eval/gold_reward_gain"] == pytest.approx(
        metrics["eval/gold_reward"] - metrics["eval/sft/gold_reward"]
    )
    assert metrics["eval/kl"] > 0
    weights_file, samples = run_dir / "model" / "model.safetensors", run_dir / "samples.md"
    assert weights_file.stat().st_mtime <= samples.stat().st_mtime  # saved before evaluating
    # model/ is a plain model dir, loadable, holding the trained (changed) weights
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    saved = load_weights(run_dir / "model")
    assert all(t.equal(saved[n]) for n, t in model.state_dict().items() if n in saved)
    sft = load_weights(cache.lookup("sft", stage_key(upstream_run(run, "sft"))) / "model")
    assert changed_tensors(sft, saved)


@pytest.mark.slow
def test_kto_lora_changes_only_adapted_weights(run_method):
    metrics, run_dir, run, cache = run_method(
        "method=kto",
        "lora=default",
        "method.max_steps=4",
        "method.precompute_ref_log_probs=false",  # reference = adapters disabled, every step
        "eval.reward_model=false",
        "dataset.n_eval_prompts=8",
    )
    assert metrics["model/trainable_params"] < metrics["model/total_params"] / 2
    sft = load_weights(cache.lookup("sft", stage_key(upstream_run(run, "sft"))) / "model")
    kto = load_weights(run_dir / "model")
    assert set(sft) == set(kto)  # merged: no adapter tensors in the saved policy
    assert changed_tensors(sft, kto) == lora_targets(sft, run.model.lora_target_modules)


def test_unpaired_csv_labels_are_read_from_their_text(tmp_path: Path):
    from rlhf_exp.data.loading import load_raw

    path = tmp_path / "feedback.csv"
    labels = ["true", "false", "True", "FALSE", "1", "0"]
    path.write_text(
        "prompt,completion,label\n" + "".join(f"P{i},C,{x}\n" for i, x in enumerate(labels))
    )
    spec = DatasetSpec(source="files", data_files={"unpaired": str(path)})
    rows = normalize_unpaired(load_raw(spec, tmp_path / "cache")["unpaired"], None, {})
    assert rows["label"] == [True, False, True, False, True, False]
    assert normalize_unpaired(
        Dataset.from_dict({"prompt": ["a"], "completion": ["b"], "label": [0]}), None, {}
    )["label"] == [False]
    path.write_text("prompt,completion,label\nP,C,true\nP,C,no\n")
    with pytest.raises(UserError, match="row 1 column 'label' holds 'no'; expected true or false"):
        normalize_unpaired(load_raw(spec, tmp_path / "cache")["unpaired"], None, {})


@pytest.mark.slow
def test_unpaired_file_trains(run_method, tmp_path: Path):
    # 3 desirable and 12 undesirable completions of 6 prompts, and demonstrations for SFT
    feedback = [
        {"prompt": f"Review {i}: the film", "completion": f" was {word}.", "label": good}
        for i in range(6)
        for word, good in (("warm", True), ("dull", False), ("slow", False))
        if good is False or i % 2 == 0
    ]
    demos = [{"prompt": f"Review {i}: the film", "completion": " was warm."} for i in range(6)]
    metrics, run_dir, run, cache = run_method(
        "dataset=files",
        f"+dataset.data_files.sft={_write(tmp_path / 'demos.jsonl', demos)}",
        f"+dataset.data_files.unpaired={_write(tmp_path / 'feedback.jsonl', feedback)}",
        "dataset.test_fraction=0.2",
        "method=kto",
        "method.max_steps=3",
        "method.per_device_train_batch_size=2",
        "upstream.sft.overrides.max_steps=3",
        "eval.reward_model=false",  # no pairs to train a reward model on
    )
    n_train, n_good = metrics["train/rows"], metrics["train/desirable_rows"]
    assert metrics["train/global_step"] == 3 and metrics["data/unpaired_train/rows"] == n_train
    assert 0 < n_good < n_train - n_good and n_train + metrics["eval/rows"] == len(feedback)
    w_d, w_u = metrics["method/desirable_weight"], metrics["method/undesirable_weight"]
    assert w_d * n_good == pytest.approx(w_u * (n_train - n_good))  # balanced by default
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["eval/loss"])
    assert metrics["eval/length_mean"] > 0  # held-out prompts were sampled
    sft = load_weights(cache.lookup("sft", stage_key(upstream_run(run, "sft"))) / "model")
    assert changed_tensors(sft, load_weights(run_dir / "model"))


@pytest.mark.slow
def test_sigterm_then_resume_matches_the_uninterrupted_run(tmp_path: Path, shared_cache: Path):
    args = [
        f"paths.cache_dir={shared_cache}",  # the SFT stage built once per session
        "method=kto",
        "debug=fast",
        "method.max_steps=8",
        "method.save_steps=4",
        "dataset.n_eval_prompts=16",
        "eval.reward_model=false",
        "method.precompute_ref_log_probs=false",
    ]
    straight = run_cli(*args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={tmp_path}/straight")
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "straight" / "metrics.json").read_text())

    run_dir = tmp_path / "killed"
    code, stderr = _kill_after_first_checkpoint(args, tmp_path, run_dir, signal.SIGTERM)
    assert code == 143 and "resume_from=latest" in stderr, stderr[-2000:]  # 128 + SIGTERM
    stopped = _complete_checkpoints(run_dir)[-1]
    assert int(stopped.name.split("-")[-1]) < expected["train/global_step"]
    resumed = run_cli(
        *args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", "resume_from=latest"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from {stopped}" in resumed.stdout + resumed.stderr
    got = json.loads((run_dir / "metrics.json").read_text())
    for key in ("eval/loss", "eval/rewards_margins", "eval/rewards_chosen", "train/global_step"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
