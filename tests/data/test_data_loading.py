"""`load_task` from files, the embedded generator (cached on disk) and the hub (monkeypatched)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
from datasets import Dataset

from rlhf_exp.artifacts import config_hash
from rlhf_exp.config.schema import DatasetSpec
from rlhf_exp.data import load_task, loading, sentiment
from rlhf_exp.errors import UserError

EOS = "<|endoftext|>"  # the bpe_tokenizer fixture's


@pytest.fixture
def toy_accepted(toy) -> list[dict[str, str]]:
    """The toy set as commonly shipped: prompt/accepted/rejected columns."""
    return [{"prompt": p, "accepted": c, "rejected": r} for p, c, r in toy]


def write(path: Path, rows: list[dict]) -> Path:
    """`rows` as a file whose format follows the extension, as a user would save them."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    elif path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        Dataset.from_list(rows).to_parquet(str(path))
    return path


def files_spec(**data_files: Path) -> DatasetSpec:
    return DatasetSpec(
        source="files",
        data_files={k: str(v) for k, v in data_files.items()},
        columns={"accepted": "chosen"},
        test_fraction=0.4,
        n_eval_prompts=10,
    )


def rows(ds: Dataset | None) -> list[dict]:
    return [] if ds is None else ds.to_list()


# ----------------------------------------------------------------------------------- files
def test_file_formats_load_to_the_same_task(tmp_path, bpe_tokenizer, toy_rows, toy_accepted):
    tasks = []
    for ext in ("jsonl", "csv", "parquet"):
        path = write(tmp_path / f"toy.{ext}", toy_accepted)
        tasks.append(load_task(files_spec(preference=path), bpe_tokenizer, tmp_path / "cache"))
    first = tasks[0]
    for task in tasks[1:]:
        for name in ("sft_train", "sft_eval", "pref_train", "pref_test", "eval_prompts"):
            assert rows(getattr(task, name)) == rows(getattr(first, name)), name
    # 5 prompts at 0.4 -> 2 held out; every toy row lands on exactly one side.
    assert len(first.pref_test) == 2
    assert sorted(rows(first.pref_train) + rows(first.pref_test), key=str) == sorted(
        toy_rows, key=str
    )


def test_preference_split_groups_prompts_and_feeds_eval(tmp_path, bpe_tokenizer):
    pairs = [
        {"prompt": f"Review film {i}:", "chosen": f" Great {j}.", "rejected": f" Bad {j}."}
        for i in range(10)
        for j in range(4)
    ]
    path = write(tmp_path / "pairs.jsonl", pairs)
    spec = files_spec(preference=path)
    spec.n_eval_prompts = 1
    task = load_task(spec, bpe_tokenizer, tmp_path / "cache")
    train_prompts, test_prompts = set(task.pref_train["prompt"]), set(task.pref_test["prompt"])
    assert not train_prompts & test_prompts
    assert len(test_prompts) == 4 and len(task.pref_test) == 16  # all 4 pairs of each prompt
    # Eval prompts: held-out prompts only, capped, with the first chosen answer as reference.
    assert len(task.eval_prompts) == 1
    (row,) = task.eval_prompts.to_list()
    assert row["prompt"] in test_prompts and row["reference"] == " Great 0."

    again = load_task(spec, bpe_tokenizer, tmp_path / "cache")
    assert rows(again.pref_test) == rows(task.pref_test)  # seeded
    other_splits = set()
    for seed in range(1, 6):
        spec.seed = seed
        other_splits.add(
            frozenset(load_task(spec, bpe_tokenizer, tmp_path / "c").pref_test["prompt"])
        )
    assert len(other_splits | {frozenset(test_prompts)}) > 1  # the seed decides the split


def test_sft_derived_from_preference_rows(tmp_path, bpe_tokenizer, toy_accepted):
    spec = files_spec(preference=write(tmp_path / "t.jsonl", toy_accepted))
    spec.gold_reward = "vader"
    task = load_task(spec, bpe_tokenizer, tmp_path)
    as_sft = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows(task.pref_train)]
    assert rows(task.sft_train) == as_sft
    held_out = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows(task.pref_test)]
    assert rows(task.sft_eval) == held_out
    assert task.gold_reward == "vader"  # passed through from the spec


def test_sft_and_eval_prompt_files(tmp_path, bpe_tokenizer):
    sft = [{"prompt": f"Line {i}:", "completion": f" text {i}"} for i in range(10)]
    evals = [{"prompt": f"Eval {i}:", "reference": f" ref {i}"} for i in range(20)]
    spec = files_spec(
        sft=write(tmp_path / "sft.jsonl", sft), eval_prompts=write(tmp_path / "eval.csv", evals)
    )
    task = load_task(spec, bpe_tokenizer, tmp_path / "cache")
    assert task.pref_train is None and task.pref_test is None
    assert len(task.sft_eval) == 4 and len(task.sft_train) == 6
    assert sorted(rows(task.sft_train) + rows(task.sft_eval), key=str) == sorted(sft, key=str)
    assert rows(task.eval_prompts) == evals[:10]  # capped at n_eval_prompts


def test_missing_file_names_the_key_and_path(tmp_path, bpe_tokenizer):
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(UserError) as err:
        load_task(files_spec(preference=missing), bpe_tokenizer, tmp_path)
    assert f"dataset.data_files.preference='{missing}'" in str(err.value)
    assert "not found" in str(err.value)


def test_unknown_extension_lists_the_valid_ones(tmp_path, bpe_tokenizer):
    path = tmp_path / "toy.xlsx"
    path.write_text("x")
    with pytest.raises(
        UserError, match=r"unknown extension '\.xlsx'; use one of \.jsonl, \.json, \.csv, \.parquet"
    ):
        load_task(files_spec(preference=path), bpe_tokenizer, tmp_path)


@pytest.mark.parametrize("content", ["", "prompt,chosen,rejected\n"])
def test_empty_file_is_an_error(tmp_path, bpe_tokenizer, content):
    path = tmp_path / "empty.csv"
    path.write_text(content)
    with pytest.raises(
        UserError, match=r"dataset\.data_files\.preference=.*(is empty|has no rows)"
    ):
        load_task(files_spec(preference=path), bpe_tokenizer, tmp_path)


@pytest.mark.parametrize("ext", ["jsonl", "csv"])
def test_non_utf8_file_is_an_error(tmp_path, bpe_tokenizer, ext, toy_accepted):
    path = write(tmp_path / f"toy.{ext}", toy_accepted)
    path.write_bytes(path.read_text("utf-8").encode("latin-1"))  # "días" -> a lone 0xed byte
    with pytest.raises(UserError, match=r"dataset\.data_files\.preference=.* is not UTF-8"):
        load_task(files_spec(preference=path), bpe_tokenizer, tmp_path)


def test_csv_cells_are_read_as_the_text_written(tmp_path):
    # pandas alone would read 54 as an int, 007 as 7 and None/NA/null as missing values
    pairs = [
        {"prompt": f"What is {i} plus 38?", "chosen": str(i + 38), "rejected": str(i + 39)}
        for i in range(10, 14)
    ]
    pairs += [
        {"prompt": "Say it:", "chosen": "None", "rejected": "NA"},
        {"prompt": "Agent", "chosen": "007", "rejected": "null"},
        {"prompt": "Big", "chosen": "1e3", "rejected": " 2.50 "},
        {"prompt": "Empty prompt next", "chosen": "nan", "rejected": "N/A"},
    ]
    task = load_task(files_spec(preference=write(tmp_path / "p.csv", pairs)), None, tmp_path)
    assert sorted(rows(task.pref_train) + rows(task.pref_test), key=str) == sorted(pairs, key=str)


def test_an_empty_csv_cell_is_empty_text_refused_naming_the_row(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,chosen,rejected\nA,yes,no\nB,,no\n", "utf-8")
    with pytest.raises(
        UserError, match=r"^dataset split 'preference' row 1 column 'chosen' is empty$"
    ):
        load_task(files_spec(preference=path), None, tmp_path)
    path.write_text("prompt,reference\nA,\nB,yes\n", "utf-8")  # "" reference: unknown
    task = load_task(files_spec(eval_prompts=path), None, tmp_path)
    assert rows(task.eval_prompts) == [
        {"prompt": "A", "reference": ""},
        {"prompt": "B", "reference": "yes"},
    ]


def test_a_rejected_csv_conversion_is_found_and_discarded(tmp_path, toy_accepted):
    from rlhf_exp.context import discard_conversions

    spec = files_spec(preference=write(tmp_path / "p.csv", toy_accepted))
    load_task(spec, None, tmp_path / "cache")
    assert (tmp_path / "cache" / "hf_datasets").is_dir()
    discard_conversions(spec, tmp_path / "cache")  # the conversion read with the same options
    assert not (tmp_path / "cache" / "hf_datasets").exists()


def test_csv_shards_of_a_split_need_the_same_columns(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.csv").write_text("prompt,chosen,rejected\nA,1,2\n", "utf-8")
    (tmp_path / "d" / "b.csv").write_text("rejected,prompt,chosen\nB,3,4\n", "utf-8")
    task = load_task(files_spec(preference=tmp_path / "d"), None, tmp_path / "c")  # any order
    assert sorted(rows(task.pref_train) + rows(task.pref_test), key=str) == [
        {"prompt": "3", "chosen": "4", "rejected": "B"},
        {"prompt": "A", "chosen": "1", "rejected": "2"},
    ]
    (tmp_path / "d" / "b.csv").write_text("prompt,chosen\nB,3\n", "utf-8")
    with pytest.raises(UserError, match=r"b\.csv' has columns \[prompt, chosen\], the first "):
        load_task(files_spec(preference=tmp_path / "d"), None, tmp_path / "c")


def test_malformed_file_is_a_one_line_error_naming_the_line(tmp_path, bpe_tokenizer):
    path = tmp_path / "broken.jsonl"
    good = '{"prompt": "q", "chosen": "b", "rejected": "c"}\n'
    path.write_text(good * 100 + '{"prompt": "a", "chosen": " b"\n' + good)
    with pytest.raises(UserError) as err:
        load_task(files_spec(preference=path), bpe_tokenizer, tmp_path)
    assert str(err.value) == (
        f"dataset.data_files.preference={str(path)!r} could not be read as JSON Lines: line 101 "
        "of broken.jsonl is not JSON (Expecting ',' delimiter: line 1 column 31 (char 30))"
    )
    whole = tmp_path / "broken.json"  # one JSON document: no line to name
    whole.write_text('{"prompt": "a", "chosen": " b"\nnot json\n')
    with pytest.raises(UserError) as err:
        load_task(files_spec(preference=whole), bpe_tokenizer, tmp_path)
    assert "could not be read as json: ValueError" in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_split_key_is_an_error(tmp_path, bpe_tokenizer, toy_accepted):
    spec = files_spec(train=write(tmp_path / "t.jsonl", toy_accepted))
    with pytest.raises(UserError, match="dataset.data_files.train is an unknown split; valid"):
        load_task(spec, bpe_tokenizer, tmp_path)


# -------------------------------------------------------------------------------- embedded
FAKE_ROWS = {
    "sft": [
        {"prompt": f"I watched film {i} and", "completion": f" liked it {i}."} for i in range(6)
    ],
    "preference": [
        {"prompt": f"Film {i} was", "chosen": " lovely.", "rejected": " awful."} for i in range(6)
    ],
    "eval_prompts": [{"prompt": "Film X was", "reference": " superb."}],
}


@pytest.fixture
def calls(monkeypatch) -> list[DatasetSpec]:
    """Replace the generator by one returning FAKE_ROWS; the list records each call's spec."""
    seen: list[DatasetSpec] = []

    def fake(spec: DatasetSpec) -> dict[str, list[dict[str, str]]]:
        seen.append(spec)
        return FAKE_ROWS

    monkeypatch.setattr(sentiment, "generate_sentiment_task", fake)
    return seen


def entries(cache_dir: Path) -> list[Path]:
    """Directories under the embedded task's cache kind (lock files and temp dirs excluded)."""
    kind = cache_dir / loading.EMBEDDED_KIND
    return sorted(p for p in kind.iterdir() if p.is_dir() and not p.name.startswith("."))


def test_embedded_rows_are_cached_on_disk(tmp_path, bpe_tokenizer, calls):
    spec = DatasetSpec(n_sft=6, n_pairs=6, n_eval_prompts=1, test_fraction=0.5)
    first = load_task(spec, bpe_tokenizer, tmp_path)
    assert len(calls) == 1
    (entry,) = entries(tmp_path)
    assert (entry / "rows" / "preference").is_dir()  # datasets arrow, readable on its own
    assert datasets.load_from_disk(str(entry / "rows" / "sft")).to_list() == FAKE_ROWS["sft"]
    second = load_task(spec, bpe_tokenizer, tmp_path)
    assert len(calls) == 1  # read from the cache
    for name in ("sft_train", "sft_eval", "pref_train", "pref_test", "eval_prompts"):
        assert rows(getattr(first, name)) == rows(getattr(second, name))
    assert rows(first.eval_prompts) == FAKE_ROWS["eval_prompts"]

    spec.test_fraction = 0.3  # splitting only: same generator rows
    load_task(spec, bpe_tokenizer, tmp_path)
    assert len(calls) == 1
    spec.seed = 1  # generation input: a new entry
    load_task(spec, bpe_tokenizer, tmp_path)
    assert len(calls) == 2 and len(entries(tmp_path)) == 2


def test_interrupted_embedded_build_leaves_no_entry(tmp_path, bpe_tokenizer, monkeypatch):
    def crash(spec):
        raise KeyboardInterrupt

    monkeypatch.setattr(sentiment, "generate_sentiment_task", crash)
    with pytest.raises(KeyboardInterrupt):
        load_task(DatasetSpec(), bpe_tokenizer, tmp_path)
    leftovers = [p for p in (tmp_path / loading.EMBEDDED_KIND).iterdir() if p.is_dir()]
    assert leftovers == []  # neither an entry nor a temp dir


def test_cache_key_ignores_fields_that_do_not_reach_the_generator():
    def key(spec: DatasetSpec, source: bytes = b"") -> str:
        return config_hash(loading.embedded_cache_key(spec, source))

    base = DatasetSpec()
    moved = DatasetSpec(test_fraction=0.2, columns={"a": "b"}, data_files={"sft": "x.jsonl"})
    assert key(base) == key(moved)
    assert key(base) != key(DatasetSpec(n_pairs=7))
    assert key(base) != key(base, b"edited generator")


def test_embedded_task_from_the_real_generator(tmp_path, bpe_tokenizer, monkeypatch):
    real, count = sentiment.generate_sentiment_task, []
    monkeypatch.setattr(
        sentiment, "generate_sentiment_task", lambda spec: count.append(1) or real(spec)
    )
    spec = DatasetSpec(n_sft=20, n_pairs=20, n_eval_prompts=4, test_fraction=0.2)
    task = load_task(spec, bpe_tokenizer, tmp_path)
    assert task.sft_train.column_names == ["prompt", "completion"]
    assert task.pref_train.column_names == ["prompt", "chosen", "rejected"]
    assert task.eval_prompts.column_names == ["prompt", "reference"]
    assert len(task.sft_train) + len(task.sft_eval) == 20 and len(task.eval_prompts) == 4
    assert not set(task.pref_train["prompt"]) & set(task.pref_test["prompt"])
    assert not set(task.eval_prompts["prompt"]) & set(task.pref_train["prompt"])
    again = load_task(spec, bpe_tokenizer, tmp_path)
    assert count == [1] and rows(again.pref_train) == rows(task.pref_train)


# ------------------------------------------------------------------------------------- hub
def test_hub_failure_is_a_one_line_user_error(tmp_path, bpe_tokenizer, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'trl-lib/ultrafeedback_binarized' on the Hub\nmore")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    spec = DatasetSpec(
        source="hub", hub_name="trl-lib/ultrafeedback_binarized", hub_splits={"preference": "train"}
    )
    with pytest.raises(UserError) as err:
        load_task(spec, bpe_tokenizer, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg
    assert "could not load dataset 'trl-lib/ultrafeedback_binarized'" in msg
    assert "ConnectionError: Couldn't reach" in msg
    assert "dataset.source=files" in msg and "dataset.data_files.preference" in msg


def test_hub_splits_are_loaded_by_name(tmp_path, bpe_tokenizer, monkeypatch, toy):
    def conv(p: str, c: str, r: str) -> dict:
        return {
            "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
            "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
        }

    hub = {
        "train_prefs": [conv(p, c.strip(), r.strip()) for p, c, r in toy[:4]],
        "test_prefs": [conv(*(s.strip() for s in toy[4]))],
    }
    seen = []

    def fake_load(name, subset=None, *, split):
        seen.append((name, subset, split))
        return Dataset.from_list(hub[split])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    spec = DatasetSpec(
        source="hub",
        hub_name="org/prefs",
        hub_subset="default",
        hub_splits={"preference": "train_prefs", "preference_test": "test_prefs"},
    )
    task = load_task(spec, bpe_tokenizer, tmp_path)
    assert seen == [("org/prefs", "default", "train_prefs"), ("org/prefs", "default", "test_prefs")]
    assert len(task.pref_train) == 4 and len(task.pref_test) == 1  # the explicit test split
    prompt = f"<|user|>\n{toy[4][0]}{EOS}\n<|assistant|>\n"
    assert rows(task.eval_prompts) == [{"prompt": prompt, "reference": toy[4][1].strip()}]
