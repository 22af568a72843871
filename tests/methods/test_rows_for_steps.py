"""A run that precomputes reference log-probs scores only the rows its steps will use."""

from __future__ import annotations

from types import SimpleNamespace

from datasets import Dataset

from rlhf_exp.training import rows_for_steps


def spec(max_steps: int) -> SimpleNamespace:
    return SimpleNamespace(
        max_steps=max_steps, per_device_train_batch_size=8, gradient_accumulation_steps=4
    )


def test_a_short_run_gets_exactly_its_steps_worth_of_rows_drawn_by_seed(caplog):
    rows = Dataset.from_dict({"i": list(range(1000))})
    with caplog.at_level("INFO", logger="rlhf_exp.training"):
        picked = rows_for_steps(rows, spec(5), seed=0)
    assert len(picked) == 5 * 32
    assert "training on 160 of 1000 rows" in caplog.text  # the cut is said, not silent
    assert len(set(picked["i"])) == 160  # no row twice
    assert picked["i"] == rows_for_steps(rows, spec(5), seed=0)["i"]  # deterministic
    assert picked["i"] != rows_for_steps(rows, spec(5), seed=1)["i"]
    assert picked["i"] != list(range(160))  # a uniform draw, not the file's first rows


def test_epochs_or_more_steps_than_rows_keep_every_row():
    rows = Dataset.from_dict({"i": list(range(100))})
    assert rows_for_steps(rows, spec(-1), seed=0) is rows
    assert rows_for_steps(rows, spec(4), seed=0) is rows  # 128 rows wanted, 100 held
