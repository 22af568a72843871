"""The HH-shaped fixture generator: deterministic, HH layout and shapes, a noisy lexical signal."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pyarrow.parquet as pq
import pytest

from rlhf_exp.data.synthetic_dialogues import hh_like_rows, main, ultrafeedback_like_rows

MARKER = "\n\nAssistant:"


def split_last_reply(text: str) -> tuple[str, str]:
    """(dialogue up to and including the last assistant marker, the last reply)."""
    head, marker, reply = text.rpartition(MARKER)
    return head + marker, reply


def words(text: str) -> int:
    return len(text.split())


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return hh_like_rows(1200, seed=0)


def test_same_seed_same_rows_other_seed_other_rows():
    assert hh_like_rows(40, seed=3) == hh_like_rows(40, seed=3)
    assert hh_like_rows(40, seed=3) != hh_like_rows(40, seed=4)


def test_rows_are_hh_dialogues_differing_only_in_the_last_reply(rows):
    turns = set()
    for row in rows:
        assert set(row) == {"chosen", "rejected"}
        assert row["chosen"].startswith("\n\nHuman: ") and row["chosen"] != row["rejected"]
        head_c, reply_c = split_last_reply(row["chosen"])
        head_r, reply_r = split_last_reply(row["rejected"])
        assert head_c == head_r  # the whole dialogue is shared
        assert reply_c.startswith(" ") and reply_c != reply_r
        assert "\n\nHuman:" not in reply_c + reply_r
        turns.add(head_c.count("\n\nHuman:"))
    assert turns == {1, 2, 3, 4}


def test_shape_statistics_follow_the_real_set(rows):
    totals = [words(r["chosen"]) for r in rows]
    replies = [words(split_last_reply(r[k])[1]) for r in rows for k in ("chosen", "rejected")]
    assert 50 <= statistics.median(totals) <= 75
    assert 150 <= np.percentile(totals, 90) <= 240  # the long tail
    assert 15 <= statistics.median(replies) <= 25
    # Replies of both sides come from one length distribution: length alone is a coin flip.
    shorter_wins = [
        1.0 if len(c) < len(r) else 0.5 if len(c) == len(r) else 0.0
        for c, r in (
            (split_last_reply(row["chosen"])[1], split_last_reply(row["rejected"])[1])
            for row in rows
        )
    ]
    assert 0.4 <= statistics.mean(shorter_wins) <= 0.6


def test_some_replies_open_with_the_same_word(rows):
    def first_word(text: str) -> str:
        return split_last_reply(text)[1].split()[0].strip(",.")

    same = [first_word(r["chosen"]) == first_word(r["rejected"]) for r in rows]
    assert 0.2 <= statistics.mean(same) <= 0.4
    assert any(split_last_reply(r["chosen"])[1].startswith(" I ") for r in rows)


def test_a_bag_of_words_finds_the_preference_but_not_perfectly():
    from scipy.sparse import vstack
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    pairs = [
        (split_last_reply(r["chosen"])[1], split_last_reply(r["rejected"])[1])
        for r in hh_like_rows(2000, seed=1)
    ]
    train, test = pairs[:1500], pairs[1500:]
    vec = CountVectorizer(token_pattern=r"(?u)\b\w+\b").fit([t for p in train for t in p])

    def diff(part):  # features of a pair: counts of chosen minus counts of rejected
        return vec.transform([c for c, _ in part]) - vec.transform([r for _, r in part])

    x = diff(train)
    clf = LogisticRegression(fit_intercept=False, max_iter=1000)
    clf.fit(vstack([x, -x]), np.r_[np.ones(len(train)), np.zeros(len(train))])
    margin = diff(test) @ clf.coef_.ravel()
    accuracy = float(np.mean((margin > 0) + 0.5 * (margin == 0)))
    assert 0.68 <= accuracy <= 0.87


def test_cli_writes_jsonl_and_hub_like_parquet_shards(tmp_path):
    main([str(tmp_path / "hh.jsonl"), "--n", "30", "--seed", "2"])
    lines = (tmp_path / "hh.jsonl").read_text("utf-8").splitlines()
    assert [json.loads(line) for line in lines] == hh_like_rows(30, seed=2)

    main([str(tmp_path / "snap"), "--n", "31", "--seed", "2", "--shards", "3"])
    shards = sorted((tmp_path / "snap" / "data").iterdir())
    assert [p.name for p in shards] == [f"train-0000{i}-of-00003.parquet" for i in range(3)]
    read = [row for p in shards for row in pq.read_table(p).to_pylist()]
    assert read == hh_like_rows(31, seed=2)


def test_ultrafeedback_like_rows_are_long_explicit_pairs():
    """The 124M benchmark's data: explicit prompt/chosen/rejected, UltraFeedback's long
    lengths (so a 512-token budget cuts many pairs), deterministic per seed."""
    rows = ultrafeedback_like_rows(400, seed=0)
    assert rows == ultrafeedback_like_rows(400, seed=0) != ultrafeedback_like_rows(400, seed=1)
    assert all(set(r) == {"prompt", "chosen", "rejected"} for r in rows)
    assert all(r["chosen"] != r["rejected"] for r in rows)
    prompt = statistics.median(words(r["prompt"]) for r in rows)
    reply = statistics.median(words(r[side]) for r in rows for side in ("chosen", "rejected"))
    assert 50 <= prompt <= 100 and 140 <= reply <= 230
    too_long = sum(words(r["prompt"]) + words(r["chosen"]) > 400 for r in rows) / len(rows)
    assert 0.1 < too_long < 0.6  # a real share exceeds a 512-token budget, not all
