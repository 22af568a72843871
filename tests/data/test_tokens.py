"""The token budget: what is cut, what is kept, ties dropped and counted, cached by content."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.data.tokens import TokenBudget, encode, fit_prompts, joined, tokenize_split
from rlhf_exp.errors import UserError

DIALOGUE = "\n\nHuman: " + "tell me more about the weather in the hills please " * 12
PROMPT = DIALOGUE + "\n\nAssistant:"


def test_cut_keeps_the_end_of_the_prompt_and_the_start_of_each_completion():
    prompt, (chosen, rejected) = TokenBudget(8, 3).cut(list(range(10)), [[11, 12, 13, 14], [21]])
    assert prompt == [5, 6, 7, 8, 9]  # the last 8 - 3 tokens
    assert chosen == [11, 12, 13] and rejected == [21]


def test_a_short_prompt_leaves_its_room_to_the_completion():
    prompt, (completion,) = TokenBudget(8, 3).cut([1, 2], [list(range(20))])
    assert prompt == [1, 2] and completion == list(range(6))
    _, (whole,) = TokenBudget(8, 3).cut([], [list(range(20))])
    assert len(whole) == 8


@pytest.mark.parametrize("max_length,completion", [(16, 4), (40, 10), (64, 63)])
def test_cut_never_exceeds_the_budget(max_length, completion):
    budget = TokenBudget(max_length, completion)
    for n_prompt in (0, 3, 30, 300):
        for n_reply in (1, 5, 50):
            p, cs = budget.cut(list(range(n_prompt)), [list(range(n_reply)), [7]])
            assert all(len(p) + len(c) <= max_length for c in cs)
            assert p == list(range(n_prompt))[len(list(range(n_prompt))) - len(p) :]


def test_budget_needs_room_for_a_prompt():
    with pytest.raises(ValueError, match="max_completion_length"):
        TokenBudget(8, 8)


def pairs(replies: list[tuple[str, str]]) -> Dataset:
    return Dataset.from_list([{"prompt": PROMPT, "chosen": c, "rejected": r} for c, r in replies])


def test_long_dialogues_keep_the_replies_that_differ(bpe_tokenizer):
    rows = pairs([(" I will help you with that.", " No, that is not something I do.")] * 3)
    full = len(encode(bpe_tokenizer, [PROMPT])[0])
    budget = TokenBudget(80, 40)
    assert full > budget.max_length  # right-truncation would cut both replies away
    out = tokenize_split(rows, "preference", bpe_tokenizer, budget)
    row = out.dataset[0]
    eos = bpe_tokenizer.eos_token_id
    assert row["chosen_ids"] != row["rejected_ids"]
    assert bpe_tokenizer.decode(row["chosen_ids"][:-1]) == " I will help you with that."
    assert row["chosen_ids"][-1] == eos  # kept whole, so it ends in EOS
    assert row["prompt_ids"] == encode(bpe_tokenizer, [PROMPT])[0][-len(row["prompt_ids"]) :]
    assert len(row["prompt_ids"]) + max(len(row["chosen_ids"]), len(row["rejected_ids"])) <= 80
    assert out.stats["prompt_truncated_fraction"] == 1.0
    assert out.stats["completion_truncated_fraction"] == 0.0
    assert out.stats["dropped_ties"] == 0 and out.kept == [0, 1, 2]


def test_pairs_identical_after_cutting_are_dropped_and_counted(bpe_tokenizer):
    same_start = " The weather in the hills is mild today and tomorrow"
    rows = pairs(
        [
            (same_start + " sunny.", same_start + " rainy."),  # differs past the budget
            (" Sunny.", " Rainy."),
            (" Same.", " Same."),
        ]
    )
    out = tokenize_split(rows, "preference", bpe_tokenizer, TokenBudget(40, 4))
    assert out.stats["rows"] == 3 and out.stats["dropped_ties"] == 2
    assert out.kept == [1] and len(out.dataset) == 1


def test_sft_rows_mask_the_prompt(bpe_tokenizer):
    rows = Dataset.from_list([{"prompt": PROMPT, "completion": " Sunny and mild."}])
    row = tokenize_split(rows, "sft", bpe_tokenizer, TokenBudget(48, 24)).dataset[0]
    n_completion = sum(row["completion_mask"])
    assert n_completion == len(encode(bpe_tokenizer, [" Sunny and mild."])[0]) + 1
    assert len(row["input_ids"]) == 48 == len(row["completion_mask"])
    assert row["completion_mask"] == [0] * (48 - n_completion) + [1] * n_completion
    assert row["input_ids"][-1] == bpe_tokenizer.eos_token_id


def test_tokenised_splits_are_cached_by_rows_tokenizer_and_budget(tmp_path, bpe_tokenizer):
    cache = ArtifactCache(tmp_path)
    rows = pairs([(" Sunny.", " Rainy.")] * 4)
    first = tokenize_split(rows, "preference", bpe_tokenizer, TokenBudget(40, 8), cache=cache)
    entries = lambda: sorted(p.name for p in (tmp_path / "data/tokenized").iterdir())  # noqa: E731
    assert len([e for e in entries() if not e.endswith(".lock")]) == 1
    again = tokenize_split(rows, "preference", bpe_tokenizer, TokenBudget(40, 8), cache=cache)
    assert again.dataset.to_list() == first.dataset.to_list()
    assert len([e for e in entries() if not e.endswith(".lock")]) == 1  # reused
    tokenize_split(rows, "preference", bpe_tokenizer, TokenBudget(40, 4), cache=cache)
    changed = pairs([(" Sunny!", " Rainy.")] * 4)
    tokenize_split(changed, "preference", bpe_tokenizer, TokenBudget(40, 8), cache=cache)
    assert len([e for e in entries() if not e.endswith(".lock")]) == 3


def test_joined_pairs_are_prompt_plus_completion(bpe_tokenizer):
    out = tokenize_split(
        pairs([(" Sunny.", " Rainy.")]), "preference", bpe_tokenizer, TokenBudget(40, 8)
    )
    row, whole = out.dataset[0], joined(out.dataset)[0]
    assert whole["chosen_ids"] == row["prompt_ids"] + row["chosen_ids"]
    assert whole["rejected_ids"] == row["prompt_ids"] + row["rejected_ids"]


def test_fit_prompts_keeps_the_end(bpe_tokenizer):
    (ids,) = fit_prompts(bpe_tokenizer, [PROMPT], 10)
    assert ids == encode(bpe_tokenizer, [PROMPT])[0][-10:]
    with pytest.raises(ValueError, match="no room"):
        fit_prompts(bpe_tokenizer, [PROMPT], 0)


def test_nothing_left_is_one_clear_error(bpe_tokenizer):
    from rlhf_exp.data.tokens import require_rows

    out = tokenize_split(
        pairs([(" Same.", " Same.")] * 2), "preference", bpe_tokenizer, TokenBudget(40, 8)
    )
    with pytest.raises(UserError, match="none of its 2 rows.*2 pairs have identical"):
        require_rows(out, "pref_train", "method.max_length")
