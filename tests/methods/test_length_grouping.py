"""`method.group_by_length`: preference rows (which have no `input_ids` column) get lengths,
the sampler puts similar lengths together, and training runs through it."""

from __future__ import annotations

import copy
from pathlib import Path

from datasets import Dataset

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import validate
from rlhf_exp.context import RunContext
from rlhf_exp.methods.dpo import build_trainer
from rlhf_exp.tracking import Tracker
from rlhf_exp.training import run_training, with_lengths

# Two length classes, interleaved: random batches of 4 mix them. 64 rows, because the sampler
# sorts within mega-batches of at most len / (4 x batch) batches.
PAIRS = [
    {
        "prompt": f"review {i}:",
        "chosen": " good" * (20 if i % 2 else 1),
        "rejected": " bad" * (20 if i % 2 else 1),
    }
    for i in range(64)
]


def dpo_trainer(compose_cfg, tmp_path: Path, tiny_lm, *overrides: str):
    run = validate(
        compose_cfg(
            "method=dpo",
            "method.max_steps=4",
            "method.per_device_train_batch_size=4",
            "method.gradient_accumulation_steps=1",
            *overrides,
        )
    )
    ctx = RunContext(run, tmp_path / "run", ArtifactCache(tmp_path / "cache"), Tracker(tmp_path))
    ctx.tracker.close()
    model, tok = copy.deepcopy(tiny_lm[0]), tiny_lm[1]
    pairs = ctx.tokenize(Dataset.from_list(PAIRS), "preference", tok, "pairs").dataset
    return build_trainer(run, ctx, "-", model, tok, pairs, pairs), ctx


def padded_fraction(trainer) -> float:
    real = padded = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        padded += batch["attention_mask"].numel()
    return 1 - real / padded


def test_lengths_count_the_prompt_and_the_longer_completion(compose_cfg, tmp_path, tiny_lm):
    trainer, _ = dpo_trainer(compose_cfg, tmp_path, tiny_lm)
    rows = with_lengths(trainer.train_dataset)
    for row in rows:
        longer = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        assert row["length"] == len(row["prompt_ids"]) + longer
    short, long = rows[0]["length"], rows[1]["length"]
    assert long > 4 * short  # the two length classes


def test_grouped_batches_carry_less_padding_and_train(compose_cfg, tmp_path, tiny_lm):
    plain, _ = dpo_trainer(compose_cfg, tmp_path / "plain", tiny_lm)
    grouped, ctx = dpo_trainer(
        compose_cfg, tmp_path / "grouped", tiny_lm, "method.group_by_length=true"
    )
    before = {n: p.detach().clone() for n, p in grouped.model.named_parameters()}
    result = run_training(grouped, ctx)  # adds the length column the sampler needs
    assert grouped.state.global_step == 4 and result.training_loss > 0
    assert any(not p.equal(before[n]) for n, p in grouped.model.named_parameters())
    assert padded_fraction(plain) > 0.3
    assert padded_fraction(grouped) < 0.5 * padded_fraction(plain)
