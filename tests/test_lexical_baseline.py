"""The bag-of-words preference baseline on hand-made pairs: signal, ties, symmetry, errors."""

from __future__ import annotations

import random

import pytest
from datasets import Dataset

from rlhf_exp.data.synthetic_dialogues import hh_like_rows
from rlhf_exp.lexical_baseline import lexical_baseline

GOOD = ("great", "helpful", "clear", "thanks", "glad", "happy")
BAD = ("awful", "rude", "useless", "wrong", "confusing", "terrible")
FILLER = (
    "the", "a", "answer", "is", "here", "you", "can", "try", "this",
    "that", "it", "was", "and", "so", "for", "with", "on",
)  # fmt: skip


def pairs(n: int, seed: int, noise: float = 0.2) -> list[dict[str, str]]:
    """Replies of six filler words and one sentiment word; chosen has the good word, except
    for a `noise` share of pairs whose labels are swapped."""
    rng = random.Random(seed)

    def reply(words: tuple[str, ...]) -> str:
        tokens = [*rng.sample(FILLER, 6), rng.choice(words)]
        rng.shuffle(tokens)
        return " ".join(tokens)

    rows = []
    for i in range(n):
        chosen, rejected = reply(GOOD), reply(BAD)
        if rng.random() < noise:
            chosen, rejected = rejected, chosen
        rows.append({"prompt": f"Human: question {i}?", "chosen": chosen, "rejected": rejected})
    return rows


def swapped(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} for r in rows]


def test_sentiment_words_with_label_noise_are_learnt():
    # 20% of the test labels are flipped too, so 0.8 is the best any scorer can do
    result = lexical_baseline(pairs(2000, seed=0), pairs(500, seed=1))
    assert result["accuracy"] > 0.7
    assert result["pairs"] == 500 and result["train_pairs"] == 2000 and result["ties"] == 0


def test_hh_like_dialogues_are_learnt_from_the_final_replies():
    def explicit(row: dict[str, str]) -> dict[str, str]:
        # the prompt: the dialogue up to and including the last "\n\nAssistant:"
        cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
        assert row["rejected"][:cut] == row["chosen"][:cut]
        return {
            "prompt": row["chosen"][:cut],
            "chosen": row["chosen"][cut:],
            "rejected": row["rejected"][cut:],
        }

    rows = [explicit(r) for r in hh_like_rows(2500, seed=0)]
    result = lexical_baseline(rows[:2000], rows[2000:])
    # 12% swapped and 14% same-style pairs cap it well below 1 (0.812 measured)
    assert result["accuracy"] > 0.6 and result["pairs"] == 500


def test_dataset_input_matches_list_input():
    train, test = pairs(300, seed=0), pairs(100, seed=1)
    assert lexical_baseline(Dataset.from_list(train), Dataset.from_list(test)) == (
        lexical_baseline(train, test)
    )


def test_identical_replies_are_ties_worth_one_half():
    same = [
        {"prompt": "Q", "chosen": f"same reply {i}", "rejected": f"same reply {i}"}
        for i in range(20)
    ]
    # trained on nothing to learn: every test pair is a tie by rule
    assert lexical_baseline(same, pairs(50, seed=1)) == {
        "accuracy": 0.5,
        "ties": 50,
        "pairs": 50,
        "train_pairs": 20,
    }
    # trained on signal, tested on identical replies: ties again, never 0
    result = lexical_baseline(pairs(500, seed=0), same)
    assert result["accuracy"] == 0.5 and result["ties"] == 20


def test_unseen_words_only_are_ties():
    test = [{"prompt": "Q", "chosen": "zebra quokka", "rejected": "narwhal axolotl"}]
    result = lexical_baseline(pairs(500, seed=0), test)
    assert result["accuracy"] == 0.5 and result["ties"] == 1


def test_swapping_the_test_pairs_gives_one_minus_accuracy():
    train = pairs(500, seed=0)
    # a few identical pairs in the test set: they stay ties both ways
    test = pairs(200, seed=1, noise=0.3) + [{"chosen": "great", "rejected": "great"}] * 3
    forward, backward = lexical_baseline(train, test), lexical_baseline(train, swapped(test))
    assert forward["ties"] == backward["ties"] == 3
    assert forward["accuracy"] + backward["accuracy"] == pytest.approx(1.0)


def test_deterministic_for_a_seed():
    train, test = pairs(1000, seed=0), pairs(200, seed=1)
    assert lexical_baseline(train, test, seed=3) == lexical_baseline(train, test, seed=3)


def test_empty_or_malformed_input_raises_clearly():
    with pytest.raises(ValueError, match="at least one train pair"):
        lexical_baseline([], pairs(5, seed=0))
    with pytest.raises(ValueError, match="at least one test pair"):
        lexical_baseline(
            pairs(5, seed=0), Dataset.from_list([{"chosen": "a", "rejected": "b"}]).select([])
        )
    with pytest.raises(ValueError, match="missing 'rejected'"):
        lexical_baseline([{"chosen": "a"}], pairs(5, seed=0))
    with pytest.raises(ValueError, match="must be a string"):
        lexical_baseline([{"chosen": [{"role": "user"}], "rejected": "b"}], pairs(5, seed=0))
