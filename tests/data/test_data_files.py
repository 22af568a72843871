"""`dataset.data_files` values as people have them (a file, a directory, a glob, `~`), checked
the same way by `check_paths` and by loading, and the content fingerprint of what they name."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import pytest
from datasets import Dataset

from rlhf_exp.config.schema import DatasetSpec, check_paths, validate
from rlhf_exp.data import load_task
from rlhf_exp.data.loading import source_fingerprint
from rlhf_exp.errors import ConfigError, UserError

KEY = "dataset.data_files.preference"


def pairs(start: int, n: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"Review film {i}:", "chosen": f" Great {i}.", "rejected": f" Bad {i}."}
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def spec(value: str | Path, **more: str | Path) -> DatasetSpec:
    files = {"preference": str(value), **{k: str(v) for k, v in more.items()}}
    return DatasetSpec(source="files", data_files=files, test_fraction=0.2, n_eval_prompts=4)


def all_pairs(task) -> list[dict]:
    return sorted(task.pref_train.to_list() + task.pref_test.to_list(), key=str)


# ------------------------------------------------------------------------------- resolving
def test_a_directory_loads_every_data_file_under_it(tmp_path):
    root = tmp_path / "snapshot"
    write_jsonl(root / "a" / "part-1.jsonl", pairs(0, 4))
    write_jsonl(root / "b" / "c" / "part-2.jsonl", pairs(4, 3))
    (root / "README.md").write_text("# not data")
    write_jsonl(root / ".cache" / "stale.jsonl", pairs(100, 5))  # hidden: skipped
    task = load_task(spec(root), None, tmp_path / "cache")
    assert all_pairs(task) == sorted(pairs(0, 7), key=str)


def test_a_glob_loads_the_matching_shards(tmp_path):
    data = tmp_path / "snap" / "data"
    write_parquet(data / "train-00000-of-00002.parquet", pairs(0, 5))
    write_parquet(data / "train-00001-of-00002.parquet", pairs(5, 5))
    write_parquet(data / "test-00000-of-00001.parquet", pairs(50, 2))
    s = spec(data / "train-*.parquet", preference_test=data / "test-*.parquet")
    task = load_task(s, None, tmp_path / "cache")
    assert task.pref_train.to_list() == pairs(0, 10)  # shards in sorted order
    assert task.pref_test.to_list() == pairs(50, 2)


def test_gzipped_jsonl_loads_and_is_checked_for_utf8(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in pairs(0, 5))
    assert all_pairs(load_task(spec(path), None, tmp_path / "c")) == sorted(pairs(0, 5), key=str)
    with gzip.open(path, "wb") as f:
        f.write('{"prompt": "d\u00edas", "chosen": " a", "rejected": " b"}\n'.encode("latin-1"))
    with pytest.raises(UserError, match=f"{KEY}=.* is not UTF-8"):
        load_task(spec(path), None, tmp_path / "c")


def test_home_is_expanded_in_loading_and_validation(tmp_path, monkeypatch, compose_cfg):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_jsonl(tmp_path / "data" / "pairs.jsonl", pairs(0, 5))
    assert len(all_pairs(load_task(spec("~/data/pairs.jsonl"), None, tmp_path / "c"))) == 5
    for value in ("~/data/pairs.jsonl", "~/data", "~/data/*.jsonl"):
        run = validate(compose_cfg("dataset=files", f"+dataset.data_files.preference='{value}'"))
        check_paths(run)  # no error


@pytest.mark.parametrize(
    ("layout", "value", "message"),
    [
        (
            {"a.jsonl": "{}", "b.csv": "x"},
            "{root}",
            r"is invalid: mixes file formats \(\.csv, \.jsonl\); point it at files of one format",
        ),
        (
            {"notes.txt": "x", "README.md": "x"},
            "{root}",
            r"is invalid: directory {root} has no file ending in \.jsonl, \.json, \.csv, \.parquet",
        ),
        ({"a.jsonl": "{}"}, "{root}/train-*.parquet", "is invalid: no file matches this glob"),
        ({"a.txt": "x"}, "{root}/*", r"is invalid: the glob matches no file ending in \.jsonl"),
    ],
    ids=["mixed", "no-data-files", "glob-no-match", "glob-no-data-files"],
)
def test_unusable_values_are_one_line_errors(tmp_path, compose_cfg, layout, value, message):
    root = tmp_path / "d"
    root.mkdir()
    for name, text in layout.items():
        (root / name).write_text(text)
    value = value.format(root=root)
    message = message.format(root=re.escape(str(root)))
    with pytest.raises(UserError, match=message) as err:
        load_task(spec(value), None, tmp_path / "cache")
    assert str(err.value).startswith(f"{KEY}={value!r}") and "\n" not in str(err.value)
    # check_paths (before anything loads) applies the same rules, with the same message.
    run = validate(compose_cfg("dataset=files", f"+{KEY}='{value}'"))
    with pytest.raises(ConfigError, match=message):
        check_paths(run)


def test_check_paths_accepts_directories_and_globs(tmp_path, compose_cfg):
    write_parquet(tmp_path / "snap" / "data" / "train-00000-of-00001.parquet", pairs(0, 3))
    for value in (tmp_path / "snap", tmp_path / "snap/data/train-*.parquet"):
        check_paths(validate(compose_cfg("dataset=files", f"+{KEY}='{value}'")))
    missing = tmp_path / "nowhere"
    run = validate(compose_cfg("dataset=files", f"+{KEY}={missing}"))
    with pytest.raises(ConfigError, match="no such file"):
        check_paths(run)


# ----------------------------------------------------------------------------- fingerprint
def test_fingerprint_follows_the_bytes_not_the_location(tmp_path):
    path = write_jsonl(tmp_path / "a" / "pairs.jsonl", pairs(0, 5))
    first = source_fingerprint(spec(path))
    assert set(first) == {"preference"} and len(first["preference"]) == 64
    assert source_fingerprint(spec(path)) == first  # deterministic

    copy = tmp_path / "elsewhere" / "renamed.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert source_fingerprint(spec(copy)) == first  # same bytes, another path

    write_jsonl(path, pairs(0, 4) + pairs(9, 1))  # rewritten in place with other rows
    assert source_fingerprint(spec(path)) != first


def test_stage_keys_follow_the_bytes_not_the_location(tmp_path, compose_cfg):
    """A copy of the data elsewhere reuses the SFT policy and reward model trained on it (a
    user's moved file, a cluster node's own mount); other rows train their own."""
    from rlhf_exp.context import stage_key, upstream_run

    def keys(path: Path) -> list[dict]:
        run = validate(compose_cfg("method=dpo", "dataset=files", f"+{KEY}={path}"))
        return [stage_key(upstream_run(run, stage)) for stage in ("sft", "reward")]

    path = write_jsonl(tmp_path / "a" / "pairs.jsonl", pairs(0, 40))
    copy = tmp_path / "elsewhere" / "renamed.jsonl"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert keys(copy) == keys(path)
    write_jsonl(copy, pairs(0, 39) + pairs(50, 1))  # one row changed
    assert all(a != b for a, b in zip(keys(copy), keys(path), strict=True))
    as_csv = tmp_path / "pairs.csv"  # the same bytes read by another reader
    shutil.copy(path, as_csv)
    assert all(a != b for a, b in zip(keys(as_csv), keys(path), strict=True))
    as_json = tmp_path / "pairs.json"  # the same reader: .jsonl and .json are both JSON
    shutil.copy(path, as_json)
    assert keys(as_json) == keys(path)


def test_fingerprint_of_a_directory_covers_every_file_and_its_name(tmp_path):
    root = tmp_path / "d"
    write_jsonl(root / "part-1.jsonl", pairs(0, 3))
    write_jsonl(root / "part-2.jsonl", pairs(3, 3))
    base = source_fingerprint(spec(root, sft=root / "part-1.jsonl"))
    assert set(base) == {"preference", "sft"} and base["preference"] != base["sft"]

    moved = tmp_path / "moved"
    shutil.copytree(root, moved)
    assert source_fingerprint(spec(moved)) == {"preference": base["preference"]}
    (moved / "part-2.jsonl").rename(moved / "part-0.jsonl")  # the same bytes, another order
    assert source_fingerprint(spec(moved))["preference"] != base["preference"]
    write_jsonl(root / "part-2.jsonl", pairs(3, 2))
    assert source_fingerprint(spec(root))["preference"] != base["preference"]


def test_fingerprint_of_hub_and_embedded_sources():
    hub = DatasetSpec(
        source="hub",
        hub_name="Anthropic/hh-rlhf",
        hub_data_dir="helpful-base",
        hub_splits={"preference_test": "test", "preference": "train"},
    )
    assert source_fingerprint(hub) == {
        "hub_name": "Anthropic/hh-rlhf",
        "hub_subset": None,
        "hub_data_dir": "helpful-base",
        "hub_splits": {"preference": "train", "preference_test": "test"},
    }
    assert source_fingerprint(DatasetSpec()) == {}


# -------------------------------------------------------------------- held-out prompts
def demos(rows: list[dict]) -> list[dict[str, str]]:
    """SFT rows over the prompts of `rows` (prompt + chosen), as an HH-style setup has them."""
    return [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows]


def prompts(ds) -> set[str]:
    return set(ds["prompt"]) if ds is not None else set()


def assert_no_held_out_prompt_trains(task) -> None:
    trained = prompts(task.sft_train) | prompts(task.pref_train)
    assert not prompts(task.pref_test) & trained
    assert not prompts(task.eval_prompts) & trained


def test_held_out_pair_prompts_never_reach_sft_train(tmp_path, caplog):
    rows = pairs(0, 50)
    pref = write_jsonl(tmp_path / "pairs.jsonl", rows)
    sft = write_jsonl(tmp_path / "sft.jsonl", demos(rows[::-1]))  # other order, same prompts
    with caplog.at_level("INFO", logger="rlhf_exp.data.loading"):
        task = load_task(spec(pref, sft=sft), None, tmp_path / "cache")
    assert_no_held_out_prompt_trains(task)
    # one prompt, one side: SFT is held out exactly where the pairs are, and nothing is lost
    assert prompts(task.sft_eval) == prompts(task.pref_test) and len(task.pref_test) == 10
    assert len(task.sft_train) + len(task.sft_eval) == 50
    assert "dataset split 'sft': 10 rows held out and 40 kept for training" in caplog.text


def test_sft_rows_of_other_prompts_split_as_before(tmp_path):
    """Rows whose prompts the pairs do not have split row-wise, as SFT rows always did: a
    task whose SFT and pair prompts are disjoint keeps its splits."""
    pref = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 20))
    sft_rows = demos(pairs(100, 30))
    sft = write_jsonl(tmp_path / "sft.jsonl", sft_rows)
    task = load_task(spec(pref, sft=sft), None, tmp_path / "cache")
    before = Dataset.from_list(sft_rows).train_test_split(test_size=6, seed=0)
    assert task.sft_train.to_list() == before["train"].to_list()
    assert task.sft_eval.to_list() == before["test"].to_list()

    shared = write_jsonl(tmp_path / "both.jsonl", demos(pairs(0, 20)) + sft_rows)
    task = load_task(spec(pref, sft=shared), None, tmp_path / "cache")
    assert_no_held_out_prompt_trains(task)
    assert prompts(task.pref_test) <= prompts(task.sft_eval)
    assert len(prompts(task.sft_eval) - prompts(task.pref_test)) == 6  # of the 30 others


def test_pairs_follow_explicit_sft_splits(tmp_path):
    rows = pairs(0, 30)
    pref = write_jsonl(tmp_path / "pairs.jsonl", rows)
    sft = write_jsonl(tmp_path / "sft.jsonl", demos(rows[:24]))
    sft_eval = write_jsonl(tmp_path / "sft_eval.jsonl", demos(rows[24:]))
    task = load_task(spec(pref, sft=sft, sft_eval=sft_eval), None, tmp_path / "cache")
    assert prompts(task.pref_train) == prompts(task.sft_train)
    assert prompts(task.pref_test) == prompts(task.sft_eval)
    assert_no_held_out_prompt_trains(task)


def test_real_shaped_dialogues_keep_held_out_prompts_out_of_training(tmp_path):
    """Multi-turn HH-shaped pairs (implicit prompts) and SFT demonstrations of their prompts."""
    from rlhf_exp.data.synthetic_dialogues import hh_like_rows
    from rlhf_exp.data.synthetic_dialogues import write_jsonl as write_dialogues

    pref = write_dialogues(hh_like_rows(120, seed=0), tmp_path / "pairs.jsonl")
    normalised = load_task(spec(pref), None, tmp_path / "cache")
    rows = normalised.pref_train.to_list() + normalised.pref_test.to_list()
    sft = write_jsonl(tmp_path / "sft.jsonl", demos(rows))
    task = load_task(spec(pref, sft=sft), None, tmp_path / "cache")
    assert_no_held_out_prompt_trains(task)
    assert prompts(task.sft_eval) == prompts(task.pref_test)
    assert prompts(task.eval_prompts) <= prompts(task.pref_test)


def test_evaluation_prompts_skip_prompts_a_training_split_has(tmp_path, caplog):
    """SFT rows are split row-wise, so a prompt with several rows can be on both sides; it is
    then no evaluation prompt."""
    rows = [{"prompt": f"Prompt {i % 8}:", "completion": f" reply {i}."} for i in range(40)]
    sft = write_jsonl(tmp_path / "sft.jsonl", rows)
    files = {"sft": str(sft)}
    data = DatasetSpec(source="files", data_files=files, test_fraction=0.2, n_eval_prompts=8)
    with caplog.at_level("INFO", logger="rlhf_exp.data.loading"):
        task = load_task(data, None, tmp_path / "cache")
    assert not prompts(task.eval_prompts) & prompts(task.sft_train)
    assert "held-out prompts skipped because a training split has them" in caplog.text


def test_stage_keys_change_only_where_splits_follow_each_other(tmp_path, compose_cfg):
    """Stages cached under the older, independent splits of SFT rows and pairs are not
    reused; a dataset of one kind of rows keeps its keys."""
    from rlhf_exp.context import stage_key, upstream_run

    pref = write_jsonl(tmp_path / "pairs.jsonl", pairs(0, 40))
    sft = write_jsonl(tmp_path / "sft.jsonl", demos(pairs(0, 40)))

    def key(*more: str) -> dict:
        run = validate(compose_cfg("method=dpo", "dataset=files", f"+{KEY}={pref}", *more))
        return stage_key(upstream_run(run, "sft"))

    assert "split" not in key()
    assert key(f"+dataset.data_files.sft={sft}")["split"] == "prompt-sides-1"
