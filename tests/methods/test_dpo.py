"""DPO end to end on the tiny model: it beats the SFT policy on the embedded task, LoRA trains
only the adapters, and a five-row `prompt/accepted/rejected` file trains through the column
mapping (its SFT upstream derived from the same rows)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhf_exp.context import stage_key, upstream_run
from tests.methods.weights import changed_tensors, load_weights, lora_targets

pytestmark = pytest.mark.slow

# Realistic pairs in a layout the data layer must rename: `accepted` is TRL's `chosen`.
TOY_PAIRS = [
    {
        "prompt": "I watched Heat last night and",
        "accepted": " it was a gripping, beautifully shot thriller.",
        "rejected": " it was long and I fell asleep.",
    },
    {
        "prompt": "The soundtrack of the new musical",
        "accepted": " is joyful and stays with you for days.",
        "rejected": " is forgettable and far too loud.",
    },
    {
        "prompt": "My sister and I saw the documentary, and",
        "accepted": " we both found it moving and honest.",
        "rejected": " we both found it dull and preachy.",
    },
    {
        "prompt": "The lead actor in this western",
        "accepted": " gives a warm, funny and confident performance.",
        "rejected": " mumbles through every scene without any charm.",
    },
    {
        "prompt": "After the final scene of the ghost story,",
        "accepted": " the audience cheered; a wonderful ending.",
        "rejected": " the audience groaned at the lazy twist.",
    },
]


def test_dpo_beats_the_sft_policy(run_method):
    metrics, run_dir, _, _ = run_method(
        "method=dpo",
        "method.max_steps=20",
        "method.learning_rate=1e-3",  # 20 steps instead of the default's full epoch
        # Precomputing scores all 2,850 training pairs, far more than 20 steps see; the
        # precomputed path is covered in test_dpo_trainer.py. This one runs the frozen copy.
        "method.precompute_ref_log_probs=false",
        # 32 prompts (debug=fast) leave the gold mean +-0.08 noisy; 256 make it +-0.03.
        "dataset.n_eval_prompts=256",
    )
    assert metrics["train/global_step"] == 20
    assert metrics["eval/pairs"] == 128  # debug=fast: max_eval_samples of the held-out pairs
    # Measured with this config, seed 0: accuracy 0.766, margin 0.46, gold 0.089 -> 0.398
    # (gain 0.308). Seed 1 gives accuracy 0.789 but a gold gain of only 0.021: 20 steps move
    # the pair margins reliably, the samples less so; hence the fixed seed.
    assert metrics["eval/rewards_accuracies"] >= 0.65
    assert metrics["eval/rewards_margins"] > 0.2
    assert metrics["eval/gold_reward_gain"] >= 0.15
    assert metrics["eval/win_rate_gold"] > 0.5 and metrics["eval/kl"] > 0
    assert metrics["eval/gold_reward_gain"] == pytest.approx(
        metrics["eval/gold_reward"] - metrics["eval/sft/gold_reward"]
    )

    acc = EventAccumulator(str(run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/rewards/accuracies", "eval/rewards/accuracies"} <= tags
    assert {"eval/rewards/margins", "eval/gold_reward", "eval/sft/gold_reward"} <= tags
    assert any(t.startswith("eval/samples") for t in acc.Tags()["tensors"])
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["eval/gold_reward_gain"] == pytest.approx(metrics["eval/gold_reward_gain"])
    assert (run_dir / "model" / "model.safetensors").is_file()


def test_dpo_lora_changes_only_adapted_weights(run_method):
    metrics, run_dir, run, cache = run_method(
        "method=dpo",
        "lora=default",
        "method.max_steps=4",
        "method.precompute_ref_log_probs=false",  # reference = adapters disabled, every step
        "upstream.sft.overrides.max_steps=4",  # any SFT policy will do here; keep it cheap
    )
    assert metrics["model/trainable_params"] < metrics["model/total_params"] / 2
    sft_entry = cache.lookup("sft", stage_key(upstream_run(run, "sft")))
    assert sft_entry is not None
    sft, dpo = load_weights(sft_entry / "model"), load_weights(run_dir / "model")
    assert set(sft) == set(dpo)  # merged: no adapter tensors in the saved policy
    adapted = lora_targets(sft, run.model.lora_target_modules)
    assert adapted, "the tiny model should have LoRA targets"
    assert changed_tensors(sft, dpo) == adapted


def test_toy_preference_file_trains_through_column_mapping(run_method, tmp_path: Path):
    path = tmp_path / "toy_pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in TOY_PAIRS))
    metrics, run_dir, run, cache = run_method(
        "method=dpo",
        "dataset=files",
        f"+dataset.data_files.preference={path}",
        # (`dataset.columns={accepted: chosen}`, as README shows, fails: Hydra's struct mode
        # rejects new keys in the empty `columns` map, so the key is added with `+`.)
        "+dataset.columns.accepted=chosen",
        "method.max_steps=3",
        "method.per_device_train_batch_size=2",
        "upstream.sft.overrides.max_steps=3",
    )
    assert metrics["train/global_step"] == 3
    assert metrics["eval/pairs"] == 1  # test_fraction 0.1 of 5 prompts: one held out
    assert math.isfinite(metrics["train/loss"]) and math.isfinite(metrics["eval/loss"])
    assert "eval/gold_reward" not in metrics  # files carry no gold reward
    assert metrics["eval/length_mean"] > 0  # the held-out prompt was still sampled
    sft_entry = cache.lookup("sft", stage_key(upstream_run(run, "sft")))
    assert sft_entry is not None  # SFT upstream trained on the accepted completions
    assert changed_tensors(load_weights(sft_entry / "model"), load_weights(run_dir / "model"))
