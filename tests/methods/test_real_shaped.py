"""Every stage on real-shaped preference data: long HH-style dialogues whose replies differ only
at the end, a user's file, no gold reward. The embedded task is one user among many."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, Trainer

from rlhf_exp import lm_head, training
from rlhf_exp.config.schema import MAX_BATCH_TOKENS
from rlhf_exp.data.synthetic_dialogues import hh_like_rows, write_jsonl

pytestmark = pytest.mark.slow

# Short enough to train in seconds, long enough that most dialogues must be cut.
BUDGET = ("dataset.max_length=192", "dataset.max_completion_length=64")
N_IDENTICAL = 4  # rows whose chosen == rejected
N_SAME_IN_BUDGET = 3  # rows whose replies differ only past the completion budget


def dialogue_file(path: Path, n: int = 400, seed: int = 0) -> Path:
    rows = hh_like_rows(n, seed=seed)
    for row in rows[:N_IDENTICAL]:
        row["rejected"] = row["chosen"]
    shared = " I can help with that." + " It depends on the details of your situation." * 40
    for row in rows[N_IDENTICAL : N_IDENTICAL + N_SAME_IN_BUDGET]:
        head = row["chosen"][: row["chosen"].rindex("\n\nAssistant:")] + "\n\nAssistant:"
        row["chosen"], row["rejected"] = head + shared + " Yes.", head + shared + " No."
    return write_jsonl(rows, path)


# The policy these runs start from only has to exist: a short SFT stage, shared by them all
SHORT_SFT = "upstream.sft.overrides.max_steps=10"


def files_overrides(data: Path) -> list[str]:
    return ["dataset=files", f"+dataset.data_files.preference={data}", *BUDGET, SHORT_SFT]


def test_reward_model_on_long_dialogues(run_method, tmp_path):
    metrics, run_dir, _, _ = run_method(
        "method=reward", *files_overrides(dialogue_file(tmp_path / "hh.jsonl"))
    )
    test_rows = metrics["data/pref_test/rows"]
    dropped = metrics["data/pref_train/dropped_ties"] + metrics["data/pref_test/dropped_ties"]
    assert dropped == N_IDENTICAL + N_SAME_IN_BUDGET  # counted, never trained on or scored
    assert metrics["eval/pairs"] == test_rows - metrics["data/pref_test/dropped_ties"]
    assert (
        metrics["train/pairs"]
        == metrics["data/pref_train/rows"] - metrics["data/pref_train/dropped_ties"]
        == metrics["data/labels/used"]  # a tie is no label learned from
    )
    assert metrics["data/pref_train/prompt_truncated_fraction"] > 0.1  # the dialogues were cut...
    assert metrics["data/pref_train/prompt_tokens_max"] > 192
    assert metrics["eval/score_ties"] == 0  # ...but never into ties
    # the reward model learned the preference, and the lexical baseline sits beside it
    assert metrics["eval/accuracy"] > max(0.6, metrics["eval/accuracy_initial"] + 0.1)
    assert 0.5 < metrics["eval/accuracy_lexical_baseline"] <= 1.0
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["data/pref_train/dropped_ties"] == metrics["data/pref_train/dropped_ties"]


def test_lora_reward_model_is_saved_with_its_adapters_merged(run_method, tmp_path, caplog):
    """LoRA on the long dialogues: the saved model is its SFT start with only the adapted
    layers' weights changed (the adapters merged in, in place) and a trained head."""
    caplog.set_level(logging.INFO, logger="rlhf_exp.artifacts")
    _, run_dir, _, _ = run_method(
        "method=reward", "lora=default", *files_overrides(dialogue_file(tmp_path / "hh.jsonl"))
    )
    sft_entry = next(  # built or reused, by this job or another worker's
        Path(found[1])
        for record in caplog.records
        if (found := re.search(r"cache: \w+ (?:sft )?(\S+/sft/[^/\s]+)", record.message))
    )
    start = AutoModelForCausalLM.from_pretrained(sft_entry / "model").state_dict()
    saved = AutoModelForSequenceClassification.from_pretrained(run_dir / "model").state_dict()
    adapted = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
    body = [key for key in saved if key.startswith("transformer.")]
    changed = {key for key in body if not torch.equal(saved[key], start[key])}
    assert changed == {key for key in body if key.endswith(adapted)}
    assert len(changed) == 4 * sum(key.endswith("ln_1.weight") for key in body)
    assert "score.weight" in saved and not any("lora_" in key for key in saved)
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".")) == []


def test_dpo_without_gold_reward_evaluates_with_the_reward_model(run_method, tmp_path):
    data = dialogue_file(tmp_path / "hh.jsonl")
    metrics, run_dir, _, _ = run_method(
        "method=dpo",
        "method.max_steps=2",  # what is tested is the evaluation without a gold reward
        "eval.num_prompts=16",
        "eval.greedy=false",
        *files_overrides(data),
    )
    assert "eval/gold_reward" not in metrics
    for key in ("eval/rm_reward", "eval/win_rate_rm", "eval/kl", "eval/length_mean"):
        assert key in metrics, key
    assert (run_dir / "model" / "model.safetensors").is_file()
    samples = (run_dir / "samples.md").read_text()
    assert "Assistant:" in samples  # evaluation prompts are held-out dialogue prompts
    assert "| RM SFT | RM policy |" in samples  # no gold reward: the reward model's scores


def test_ppo_rolls_out_and_evaluates_long_dialogue_prompts(run_method, tmp_path):
    data = dialogue_file(tmp_path / "hh.jsonl")
    metrics, run_dir, _, _ = run_method(
        "method=ppo",
        "method.max_steps=2",
        "method.eval_steps=1",  # the periodic evaluation generates from long prompts too
        "method.rollout_batch_size=32",
        "eval.num_prompts=16",
        *files_overrides(data),
    )
    assert metrics["train/global_step"] == 2
    assert "eval/rm_reward" in metrics and "eval/gold_reward" not in metrics
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_changed_rows_rebuild_sft_and_reward_model(run_method, tmp_path, shared_cache, caplog):
    data = tmp_path / "hh.jsonl"
    # DPO resolves both upstream stages (the reward model for its evaluation) from the cache.
    quick = ["method=dpo", "method.max_steps=2", "eval.num_prompts=4", "eval.greedy=false"]
    quick += ["upstream.sft.overrides.max_steps=3", "upstream.reward.overrides.max_steps=3"]
    caplog.set_level(logging.INFO, logger="rlhf_exp.artifacts")

    def stages_used() -> dict[str, tuple[str, str]]:
        """stage -> (building or reusing, cache entry) for this test's last run: the cache is
        shared with other tests (and xdist workers), so only its own entries count."""
        found = {}
        for record in caplog.records:
            line = re.match(r"cache: (building|reusing) (sft|reward|base) (\S+)", record.message)
            if line:  # the first look-up: later stages look their upstream up again
                found.setdefault(line[2], (line[1], Path(line[3]).name))
        caplog.clear()
        return found

    dialogue_file(data, n=120, seed=1)
    run_method(*files_overrides(data), *quick)
    first = stages_used()
    assert set(first) == {"sft", "reward", "base"}
    run_method(*files_overrides(data), *quick)  # same bytes: reused (their base not looked up)
    second = stages_used()
    assert {"sft", "reward"} <= set(second)
    assert all(second[stage] == ("reusing", first[stage][1]) for stage in second)
    dialogue_file(data, n=120, seed=2)  # same path, other rows
    run_method(*files_overrides(data), *quick)
    third = stages_used()
    for stage in ("sft", "reward"):  # rebuilt from the new rows, beside the old entries
        how, key = third[stage]
        assert how == "building" and key != first[stage][1], stage
        assert (shared_cache / stage / key).is_dir(), stage
        assert (shared_cache / stage / first[stage][1]).is_dir(), stage


def test_pairs_that_all_tie_stop_with_one_line(tmp_path):
    from tests.conftest import run_cli

    rows = [{"chosen": r["chosen"], "rejected": r["chosen"]} for r in hh_like_rows(60)]
    data = write_jsonl(rows, tmp_path / "ties.jsonl")
    run_dir = tmp_path / "run"
    quick = ["debug=fast", "upstream.sft.overrides.max_steps=2", f"paths.root_dir={tmp_path}"]
    quick.append(f"hydra.run.dir={run_dir}")
    result = run_cli("method=reward", *files_overrides(data), *quick)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    # refused up front (data/checks.py), before any stage trains, with the count
    assert line.startswith("error: dataset split 'pref_train': all ")
    assert "pairs have the same text as chosen and rejected" in line
    assert (run_dir / "metrics.json").is_file()  # the failure is recorded...
    assert not (run_dir / "model").exists()  # ...and no reward model was trained or saved


def test_a_checkpoint_is_not_resumed_on_edited_data(tmp_path, shared_cache):
    from tests.conftest import run_cli

    data = dialogue_file(tmp_path / "hh.jsonl", n=120, seed=1)
    run_dir = tmp_path / "run"
    common = [*files_overrides(data), "method=sft", "debug=fast", "method.max_steps=2"]
    common += ["method.save_steps=1", f"paths.root_dir={tmp_path}"]
    common += [f"paths.cache_dir={shared_cache}", f"hydra.run.dir={run_dir}"]
    first = run_cli(*common)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (run_dir / "checkpoints" / "checkpoint-2" / "COMPLETE").is_file()
    trained_on = json.loads((run_dir / "data.json").read_text())["preference"]
    resumed = run_cli(*common, "resume_from=latest")  # the same bytes: its own dir
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    dialogue_file(data, n=120, seed=2)  # edited in place: same path, same config
    resumed = run_cli(*common, "resume_from=latest")
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    assert resumed.stderr.strip() == (
        f"error: run dir {run_dir} holds this config's run on other data "
        "(dataset.data_files.preference changed since); choose another hydra.run.dir, or pass "
        "overwrite=true to delete its contents"
    )
    assert "status" not in json.loads((run_dir / "metrics.json").read_text())  # kept as it was
    again = run_cli(*common, "overwrite=true")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run_dir / "data.json").read_text())["preference"] != trained_on


def test_a_sweep_rerun_on_edited_data_keeps_no_stale_result(tmp_path, shared_cache):
    from tests.conftest import run_cli

    data = dialogue_file(tmp_path / "hh.jsonl", n=120, seed=1)
    sweep = tmp_path / "sweep"
    common = ["-m", *files_overrides(data), "method=sft", "debug=fast", "method.max_steps=2"]
    common += [f"paths.root_dir={tmp_path}", f"paths.cache_dir={shared_cache}"]
    common.append(f"hydra.sweep.dir={sweep}")
    assert run_cli(*common).returncode == 0
    (job,) = [p for p in sweep.iterdir() if (p / "metrics.json").is_file()]
    again = run_cli(*common)
    assert "finished before with this config; skipped" in again.stderr + again.stdout
    dialogue_file(data, n=120, seed=2)  # edited in place
    edited = run_cli(*common)
    assert edited.returncode == 1, edited.stderr[-2000:]  # the job failed, and says why
    assert "skipped" not in edited.stderr + edited.stdout
    metrics = json.loads((job / "metrics.json").read_text())
    line = "(dataset.data_files.preference changed since)"
    assert metrics["status"] == "failed" and line in metrics["error"]
    report = (sweep / "comparison.md").read_text()
    assert "1 run, 1 failed" in report, report


def forwards_inside(monkeypatch, phase: str, grad: bool) -> list[int]:
    """Padded tokens of every forward of a trainer's model inside `Trainer.<phase>` (train,
    evaluate) with gradients on or off: what one batch or micro-batch holds."""
    forwards: list[int] = []
    wrapped = getattr(Trainer, phase)

    def recorded(self: Trainer, *args, **kwargs):
        def record(module, args, kwargs):
            if torch.is_grad_enabled() == grad:
                forwards.append(kwargs["input_ids"].numel())

        handle = self.model.register_forward_pre_hook(record, with_kwargs=True)
        try:
            return wrapped(self, *args, **kwargs)
        finally:
            handle.remove()

    monkeypatch.setattr(Trainer, phase, recorded)
    return forwards


def short_run(method: str, data: Path) -> list[str]:
    return [f"method={method}", "method.max_steps=2", "method.max_eval_samples=16"] + [
        "eval.num_prompts=4",
        *files_overrides(data),
    ]


@pytest.mark.parametrize("method", ["reward", "dpo"])
def test_long_held_out_rows_are_evaluated_in_batches_within_the_token_budget(
    run_method, tmp_path, monkeypatch, method
):
    """At 192-token rows a pair is 384 tokens, so 1,024 tokens hold 2 pairs, not the default
    64. The same trained model then gets the same held-out loss as in bigger batches."""
    args = short_run(method, dialogue_file(tmp_path / "hh.jsonl"))
    default, _, _, _ = run_method(*args)  # before recording: upstream stages evaluate too
    forwards = forwards_inside(monkeypatch, "evaluate", grad=False)
    capped, _, _, _ = run_method(*args, "method.eval_batch_tokens=1024")
    assert forwards and max(forwards) <= 1024
    assert max(forwards) > 384  # two pairs per batch where they fit, not one
    assert len(forwards) >= 16 // 2  # every held-out pair evaluated
    assert capped["eval/loss"] == pytest.approx(default["eval/loss"], rel=1e-4)
    assert capped["train/loss"] == default["train/loss"]  # the same training


@pytest.mark.parametrize("method", ["sft", "reward", "dpo"])
def test_long_training_rows_are_split_into_micro_batches_within_the_token_budget(
    run_method, tmp_path, monkeypatch, method
):
    """1,024 tokens hold 5 rows of 192 tokens, or 2 pairs: each step's rows (SFT 32, reward
    and DPO 32 pairs) go through in more, smaller micro-batches, and the run learns what it
    learns in whole ones."""
    args = short_run(method, dialogue_file(tmp_path / "hh.jsonl"))
    whole, _, _, _ = run_method(*args, f"method.train_batch_tokens={MAX_BATCH_TOKENS}")
    forwards = forwards_inside(monkeypatch, "train", grad=True)
    split, _, _, _ = run_method(*args, "method.train_batch_tokens=1024")
    assert forwards and max(forwards) <= 1024
    assert len(forwards) >= 2 * 32 // 5  # 2 steps, at most 5 rows per forward
    # reward and DPO train without dropout: the same steps to rounding. SFT keeps GPT-2's
    # dropout, whose masks follow the micro-batch shapes: the same loss to its noise (a
    # loss averaged wrongly over the micro-batches would be off by their count, 8x or 16x)
    tolerance = 1e-2 if method == "sft" else 1e-4
    assert split["train/loss"] == pytest.approx(whole["train/loss"], rel=tolerance)
    assert split["eval/loss"] == pytest.approx(whole["eval/loss"], rel=tolerance)


def test_dpo_projects_only_reply_tokens_through_the_lm_head(
    run_method, tmp_path, monkeypatch, lm_head_rows
):
    """On CPU, TRL's fused LM head scored every position, dialogue and padding included; it
    now scores the reply tokens only (rlhf_exp/lm_head.py). The same run learns the same."""
    args = short_run("dpo", dialogue_file(tmp_path / "hh.jsonl"))
    run_method(*args)  # the upstream stages, cached, so both runs below are DPO alone
    monkeypatch.setattr(trl_utils, "_use_triton", lm_head._trl_use_triton)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", lm_head._trl_function)
    monkeypatch.setattr(training, "install_cpu_lm_head", lambda: None)
    lm_head_rows.clear()
    every_position, _, _, _ = run_method(*args)
    scored_before = sum(lm_head_rows)
    monkeypatch.setattr(training, "install_cpu_lm_head", lm_head.install_cpu_lm_head)
    lm_head_rows.clear()
    compact, _, _, _ = run_method(*args)
    # replies are at most 64 of a row's 192 tokens, and most rows are cut to the budget:
    # 8,642 of 49,320 positions (17.5%) when written
    assert 0 < sum(lm_head_rows) < scored_before / 3
    for key in ("train/loss", "eval/loss", "eval/rewards_accuracies"):
        assert compact[key] == pytest.approx(every_position[key], rel=1e-5), key


def test_ppo_splits_long_prompts_into_micro_batches_within_the_token_budget(
    run_method, tmp_path, monkeypatch
):
    """At a 192-token budget a rollout row is up to 192 tokens, so 1,024 tokens hold 5: each
    32-row minibatch trains in micro-batches of 4 (the largest divisor of 32 that fits), and
    the iteration learns what it learns in whole ones."""
    from rlhf_exp.methods.ppo.trainer import PPOTrainer

    args = [
        "method=ppo",
        "method.max_steps=1",
        "method.rollout_batch_size=32",
        "method.ppo_epochs=2",
        "eval.num_prompts=4",
        *files_overrides(dialogue_file(tmp_path / "hh.jsonl")),
    ]
    whole, _, _, _ = run_method(*args, f"method.train_batch_tokens={MAX_BATCH_TOKENS}")
    forwards: list[tuple[int, int]] = []
    update = PPOTrainer.update

    def recorded(self, batch, *heap):
        hook = self.unwrapped.policy.register_forward_pre_hook(
            lambda module, a, kw: forwards.append(tuple(kw["input_ids"].shape)), with_kwargs=True
        )
        try:
            return update(self, batch, *heap)
        finally:
            hook.remove()

    monkeypatch.setattr(PPOTrainer, "update", recorded)
    split, _, _, _ = run_method(*args, "method.train_batch_tokens=1024")
    assert forwards and all(rows * width <= 1024 for rows, width in forwards)
    assert len(forwards) == 2 * 32 // 4  # 2 epochs of the rollout's 32 rows, 4 at a time
    assert split["objective/scores"] == whole["objective/scores"]  # the same rollout
    # the same iteration to rounding (advantages are whitened, so the policy loss sits near
    # zero: compared absolutely)
    assert split["val/vf_loss"] == pytest.approx(whole["val/vf_loss"], rel=1e-3)
    assert split["policy/pg_loss"] == pytest.approx(whole["policy/pg_loss"], abs=1e-4)
    assert split["policy/approxkl"] == pytest.approx(whole["policy/approxkl"], abs=1e-4)
