"""Batches hold at most `eval_batch_tokens` (evaluation) or `train_batch_tokens` (a training
micro-batch) padded tokens, whatever the row count; training keeps its rows per step."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from datasets import Dataset

from rlhf_exp.training import eval_batch_size, longest_sequence, micro_batches


def spec(
    rows: int = 64, tokens: int = 4096, max_length: int = 512, micro: int = 32, steps: int = 1
) -> SimpleNamespace:
    return SimpleNamespace(
        per_device_eval_batch_size=rows,
        eval_batch_tokens=tokens,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=steps,
        train_batch_tokens=tokens,
        max_length=max_length,
    )


def pairs(prompt: int, chosen: int, rejected: int, n: int = 3) -> Dataset:
    return Dataset.from_dict(
        {
            "prompt_ids": [[1] * prompt] * n,
            "chosen_ids": [[2] * chosen] * n,
            "rejected_ids": [[3] * rejected] * n,
        }
    )


def test_longest_sequence_joins_the_prompt_to_each_completion_column():
    assert longest_sequence(pairs(100, 20, 30), max_length=512) == 130
    sft = Dataset.from_dict({"input_ids": [[1] * 7, [1] * 90, [1] * 12]})
    assert longest_sequence(sft, max_length=512) == 90
    joined = Dataset.from_dict({"chosen_ids": [[1] * 40], "rejected_ids": [[1] * 45]})
    assert longest_sequence(joined, max_length=512) == 45
    # KTO: a KL row joins one row's prompt to another row's completion, so the bound is the
    # longest prompt plus the longest completion, and never more than the budget
    kto = Dataset.from_dict(
        {"prompt_ids": [[1] * 300, [1] * 10], "completion_ids": [[2] * 5, [2] * 200]}
    )
    assert longest_sequence(kto, max_length=1000) == 500
    assert longest_sequence(kto, max_length=480) == 480


def test_long_rows_get_fewer_rows_per_batch_and_it_is_said(caplog):
    # 2 sequences of 512 tokens per pair: 4 pairs fill 4,096 tokens
    with caplog.at_level("INFO", logger="rlhf_exp.training"):
        assert eval_batch_size(pairs(256, 256, 200), spec(), sequences_per_row=2) == 4
    assert "4 rows per batch, not per_device_eval_batch_size=64" in caplog.text
    assert "eval_batch_tokens=4096" in caplog.text
    assert eval_batch_size(pairs(256, 256, 200), spec(), sequences_per_row=1) == 8


def test_short_rows_keep_the_configured_row_count(caplog):
    with caplog.at_level("INFO", logger="rlhf_exp.training"):
        assert eval_batch_size(pairs(10, 12, 8), spec(rows=64), sequences_per_row=2) == 64
    assert caplog.text == ""  # nothing changed, nothing said


def test_a_row_longer_than_the_budget_is_still_evaluated_alone():
    assert eval_batch_size(pairs(400, 100, 100), spec(tokens=256), sequences_per_row=2) == 1


def test_a_dataset_without_token_columns_is_refused():
    with pytest.raises(ValueError, match="no token-id column"):
        longest_sequence(Dataset.from_dict({"text": ["a"]}), max_length=8)


def sft_rows(longest: int) -> Dataset:
    return Dataset.from_dict({"input_ids": [[1] * 20, [1] * longest, [1] * 30]})


def test_long_training_rows_split_a_step_into_more_micro_batches(caplog):
    # 32 rows of up to 512 tokens: 8 fill 4,096, so the step is 4 micro-batches of 8
    with caplog.at_level("INFO", logger="rlhf_exp.training"):
        split = micro_batches(sft_rows(512), spec(), sequences_per_row=1)
    assert split == {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}
    assert "32 rows per step as 4 micro-batches of 8, not 1 of 32" in caplog.text
    # pairs: 2 sequences each; 8 x 4 = 32 pairs per step stay 32
    pairs_split = micro_batches(pairs(256, 256, 200), spec(micro=8, steps=4), sequences_per_row=2)
    assert pairs_split == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 8}


def test_micro_batches_divide_the_step_exactly():
    # 6 x 5 = 30 rows of up to 512 tokens; 4 would fit in 2,048, but 30 rows are 10 micro-batches
    # of 3, not 7.5 of 4
    split = micro_batches(sft_rows(512), spec(micro=6, steps=5, tokens=2048), sequences_per_row=1)
    assert split == {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 10}
    alone = micro_batches(sft_rows(512), spec(tokens=100), sequences_per_row=1)
    assert alone == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 32}


def test_short_training_rows_keep_the_configured_micro_batches(caplog):
    with caplog.at_level("INFO", logger="rlhf_exp.training"):
        split = micro_batches(sft_rows(128), spec(micro=32, steps=2), sequences_per_row=1)
    assert split == {"per_device_train_batch_size": 32, "gradient_accumulation_steps": 2}
    assert caplog.text == ""
