"""The hub presets (conf/dataset/hh_rlhf.yaml, ultrafeedback.yaml) compose, validate, and
normalise local fixtures of their datasets' shapes, from files and through the hub path."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets
import pytest
from datasets import Dataset

from rlhf_exp.config.schema import DatasetSpec, validate
from rlhf_exp.data import load_task
from rlhf_exp.data.synthetic_dialogues import hh_like_rows, write_parquet_shards

EOS = "<|endoftext|>"  # the bpe_tokenizer fixture's
MARKER = "\n\nAssistant:"
SPLITS = ("sft_train", "sft_eval", "pref_train", "pref_test", "eval_prompts")


def preset(compose_cfg, name: str, *overrides: str) -> DatasetSpec:
    return validate(compose_cfg(f"dataset={name}", *overrides)).dataset


def as_files(spec: DatasetSpec, **data_files: Path | str) -> DatasetSpec:
    """The preset's settings, reading local files instead of the hub."""
    files = {k: str(v) for k, v in data_files.items()}
    return dataclasses.replace(spec, source="files", data_files=files)


def fake_hub(monkeypatch, splits: dict[str, list[dict]]) -> list[tuple]:
    """`datasets.load_dataset` serving `splits` by name; returns the calls it receives."""
    calls: list[tuple] = []

    def load_dataset(name, subset=None, *, split, **kwargs):
        calls.append((name, subset, split, kwargs))
        return Dataset.from_list(splits[split])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def table(task) -> dict[str, list[dict]]:
    return {name: getattr(task, name).to_list() for name in SPLITS}


# ----------------------------------------------------------------------------------- hh-rlhf
HH_TRAIN, HH_TEST = hh_like_rows(60, seed=0), hh_like_rows(20, seed=1)


def test_hh_rlhf_preset_composes_and_validates(compose_cfg):
    spec = preset(compose_cfg, "hh_rlhf")
    assert (spec.name, spec.source, spec.hub_name) == ("hh_rlhf", "hub", "Anthropic/hh-rlhf")
    assert spec.hub_subset is None and spec.hub_data_dir is None and spec.gold_reward is None
    assert spec.hub_splits == {"preference": "train", "preference_test": "test"}
    assert (spec.n_eval_prompts, spec.test_fraction) == (256, 0.05)
    assert preset(compose_cfg, "hh_rlhf", "dataset.hub_data_dir=helpful-base").hub_data_dir == (
        "helpful-base"
    )


@pytest.mark.parametrize("layout", ["glob", "directory"])
def test_hh_rlhf_local_snapshot_normalises_at_turn_boundaries(
    compose_cfg, tmp_path, bpe_tokenizer, layout
):
    if layout == "glob":  # one snapshot, as downloaded: data/{train,test}-0000i-of-0000n.parquet
        write_parquet_shards(HH_TRAIN, tmp_path / "hh", "train", shards=2)
        write_parquet_shards(HH_TEST, tmp_path / "hh", "test", shards=1)
        files = {"preference": "hh/data/train-*.parquet", "preference_test": "hh/data/test-*"}
    else:  # one directory per split
        write_parquet_shards(HH_TRAIN, tmp_path / "train", "train", shards=2)
        write_parquet_shards(HH_TEST, tmp_path / "test", "test", shards=1)
        files = {"preference": "train", "preference_test": "test"}
    spec = as_files(preset(compose_cfg, "hh_rlhf"), **{k: tmp_path / v for k, v in files.items()})
    task = load_task(spec, bpe_tokenizer, tmp_path / "cache")

    for ds, originals in ((task.pref_train, HH_TRAIN), (task.pref_test, HH_TEST)):
        assert len(ds) == len(originals)  # the repo's own test split, shards in order
        for row, original in zip(ds.to_list(), originals, strict=True):
            assert row["prompt"].endswith(MARKER) and row["chosen"].startswith(" ")
            assert row["prompt"] + row["chosen"] == original["chosen"]
            assert row["prompt"] + row["rejected"] == original["rejected"]
    assert task.sft_train["completion"] == task.pref_train["chosen"]  # SFT on preferred replies
    test_prompts = set(task.pref_test["prompt"])
    assert task.eval_prompts.num_rows == len(test_prompts)  # all of them: fewer than 256
    assert set(task.eval_prompts["prompt"]) == test_prompts


def test_hh_rlhf_hub_path_passes_name_data_dir_and_splits(
    compose_cfg, tmp_path, bpe_tokenizer, monkeypatch
):
    write_parquet_shards(HH_TRAIN, tmp_path / "hh", "train", shards=2)
    write_parquet_shards(HH_TEST, tmp_path / "hh", "test", shards=1)
    spec = preset(compose_cfg, "hh_rlhf", "dataset.hub_data_dir=helpful-base")
    local = as_files(
        spec,
        preference=tmp_path / "hh/data/train-*.parquet",
        preference_test=tmp_path / "hh/data/test-*",
    )
    from_files = load_task(local, bpe_tokenizer, tmp_path / "cache")

    calls = fake_hub(monkeypatch, {"train": HH_TRAIN, "test": HH_TEST})
    from_hub = load_task(spec, bpe_tokenizer, tmp_path / "cache")
    assert calls == [
        ("Anthropic/hh-rlhf", None, "train", {"data_dir": "helpful-base"}),
        ("Anthropic/hh-rlhf", None, "test", {"data_dir": "helpful-base"}),
    ]
    assert table(from_hub) == table(from_files)


# ----------------------------------------------------------------------------- ultrafeedback
def uf_rows(n: int, offset: int, with_prompt: bool) -> list[dict]:
    """trl-lib/ultrafeedback_binarized's shape: whole user + assistant conversations."""
    rows = []
    for i in range(offset, offset + n):
        prompt = f"Question {i}: which film should I watch tonight?"
        row = {
            "chosen": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": f"Try film {i}; it is warm and funny."},
            ],
            "rejected": [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": "No idea."},
            ],
            "score_chosen": 8.0,
            "score_rejected": 3.0,
        }
        rows.append({"prompt": prompt, **row} if with_prompt else row)
    return rows


def test_ultrafeedback_preset_composes_and_validates(compose_cfg):
    spec = preset(compose_cfg, "ultrafeedback")
    assert (spec.source, spec.hub_name) == ("hub", "trl-lib/ultrafeedback_binarized")
    assert spec.hub_splits == {"preference": "train", "preference_test": "test"}
    assert spec.hub_data_dir is None


@pytest.mark.parametrize("with_prompt", [True, False], ids=["prompt-column", "no-prompt"])
def test_ultrafeedback_local_snapshot_renders_the_chat_template(
    compose_cfg, tmp_path, bpe_tokenizer, monkeypatch, with_prompt
):
    train, test = uf_rows(12, 0, with_prompt), uf_rows(4, 100, with_prompt)
    data = tmp_path / "uf" / "data"
    data.mkdir(parents=True)
    Dataset.from_list(train).to_parquet(str(data / "train-00000-of-00001.parquet"))
    Dataset.from_list(test).to_parquet(str(data / "test-00000-of-00001.parquet"))
    spec = preset(compose_cfg, "ultrafeedback")
    files = as_files(spec, preference=data / "train-*", preference_test=data / "test-*")
    task = load_task(files, bpe_tokenizer, tmp_path / "cache")

    assert len(task.pref_train) == 12 and len(task.pref_test) == 4
    first = task.pref_test[0]
    question = test[0]["chosen"][0]["content"]
    assert first == {
        "prompt": f"<|user|>\n{question}{EOS}\n<|assistant|>\n",
        "chosen": f"{test[0]['chosen'][1]['content']}{EOS}",
        "rejected": f"No idea.{EOS}",
    }
    reference = first["chosen"].removesuffix(EOS)  # generations carry no EOS either
    assert task.eval_prompts[0] == {"prompt": first["prompt"], "reference": reference}

    calls = fake_hub(monkeypatch, {"train": train, "test": test})
    from_hub = load_task(spec, bpe_tokenizer, tmp_path / "cache")
    name = "trl-lib/ultrafeedback_binarized"
    assert calls == [(name, None, "train", {}), (name, None, "test", {})]  # no data_dir
    assert table(from_hub) == table(task)
