"""The tiny base learns its tokenizer from the dataset's own text, keyed by that text."""

from __future__ import annotations

from pathlib import Path

from transformers import AutoTokenizer

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import validate
from rlhf_exp.context import RunContext
from rlhf_exp.data.synthetic_dialogues import hh_like_rows, write_jsonl
from rlhf_exp.tracking import Tracker


def base_dir(compose_cfg, cache: Path, *overrides: str) -> Path:
    run = validate(compose_cfg("method=sft", *overrides))
    tracker = Tracker(cache.parent, tensorboard=False, writes=False)
    return Path(RunContext(run, cache.parent / "run", ArtifactCache(cache), tracker).base_model())


def test_user_data_gets_a_tokenizer_of_its_own_text(compose_cfg, tmp_path):
    cache = tmp_path / "cache"
    rows = hh_like_rows(600, seed=0)
    data = write_jsonl(rows, tmp_path / "hh.jsonl")
    files = ["dataset=files", f"+dataset.data_files.preference={data}"]
    embedded = base_dir(compose_cfg, cache)
    own = base_dir(compose_cfg, cache, *files)
    assert own != embedded
    held_out = [r["chosen"] for r in hh_like_rows(50, seed=9)]

    def tokens(model_dir: Path) -> int:
        tok = AutoTokenizer.from_pretrained(model_dir)
        return sum(len(ids) for ids in tok(held_out)["input_ids"])

    assert tokens(own) < 0.8 * tokens(embedded)  # dialogue text in far fewer tokens
    # dialogue-length defaults: the model has room for the dataset's token budget
    assert AutoTokenizer.from_pretrained(own).model_max_length == 512
    assert base_dir(compose_cfg, cache, *files) == own  # same bytes: the cached base
    write_jsonl(hh_like_rows(600, seed=1), data)  # same path, other rows
    assert base_dir(compose_cfg, cache, *files) != own
