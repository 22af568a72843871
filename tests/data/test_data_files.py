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
