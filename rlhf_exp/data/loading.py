"""Load a task's datasets from the embedded generator, local files or the hub, then split them.

`load_task(spec, tokenizer, cache_dir)` returns a `TaskData` whose datasets are already
normalised (see `formats.py`), so methods never look at the source layout:

    sft_train, sft_eval     prompt, completion
    pref_train, pref_test   prompt, chosen, rejected
    eval_prompts            prompt, reference

Raw split names, the keys of `dataset.data_files` / `dataset.hub_splits` (a `data_files`
value may be a file, a directory or a glob: `config/data_files.py`):

    sft, preference, eval_prompts    the three kinds of rows
    preference_test, sft_eval        explicit held-out splits (e.g. ultrafeedback's
                                     test_prefs); without them a seeded split is drawn

Splitting rules: the preference split is grouped by prompt so no prompt is in both train and
test; SFT rows are split row-wise (a `text`-only corpus has one prompt, ""); without SFT rows,
SFT data is the preference rows' prompt + chosen; without eval prompts, up to
`n_eval_prompts` distinct held-out prompts are taken, with chosen as the reference.

One prompt, one side: a split drawn here follows the sides of the splits already fixed
(`_split_following`), so no stage trains on a prompt another split holds out. Explicit splits
are fixed first, then the pairs, then the SFT rows (then KTO's unpaired rows,
`split_unpaired`): an SFT row whose prompt is a held-out pair prompt goes to sft_eval, one
whose prompt is a training pair prompt to sft_train, and only rows of prompts no other split
has are split as before. Evaluation prompts drawn from held-out rows skip any prompt a
training split holds. Rows moved or skipped this way are counted in the log.

Try it:

    python -c "from pathlib import Path; from rlhf_exp.config.schema import DatasetSpec; \
from rlhf_exp.data import load_task; \
print(load_task(DatasetSpec(n_sft=50, n_pairs=50, n_eval_prompts=8), None, Path('/tmp/c')))"
"""

from __future__ import annotations

import codecs
import dataclasses
import gzip
import hashlib
import importlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from datasets import Dataset

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.data_files import extension, file_format, is_glob, resolve_data_files
from rlhf_exp.config.schema import DatasetSpec
from rlhf_exp.data.formats import (
    normalize_eval_prompts,
    normalize_preference,
    normalize_sft,
    strip_eos,
)
from rlhf_exp.errors import UserError

logger = logging.getLogger(__name__)

# `unpaired`: prompt/completion/label rows (formats.normalize_unpaired), read by method=kto
RAW_SPLITS = ("sft", "sft_eval", "preference", "preference_test", "eval_prompts", "unpaired")
# Spec fields that never reach the embedded generator; everything else keys its cache, so a
# field the generator starts to read can only cause a rebuild, never stale rows.
_NOT_GENERATION_FIELDS = {
    "source",
    "columns",
    "data_files",
    "hub_name",
    "hub_subset",
    "hub_data_dir",
    "hub_splits",
    "test_fraction",
    # how the methods cut and batch the rows, not which rows exist
    "max_length",
    "max_completion_length",
    "num_proc",
    "group_by_length",
    # which labels a run uses (data/policy_pairs.py), not which rows the generator writes
    "pairs",
    "n_labels",
    "label_noise",
    "label_temperature",
    "pair_max_new_tokens",
}


@dataclass
class TaskData:
    """A task's normalised datasets; a `None` split is one the source could not provide."""

    sft_train: Dataset | None  # prompt, completion
    sft_eval: Dataset | None  # prompt, completion
    pref_train: Dataset | None  # prompt, chosen, rejected
    pref_test: Dataset | None  # prompt, chosen, rejected
    eval_prompts: Dataset | None  # prompt, reference
    gold_reward: str | None  # name of a registered reward function, from the spec


# ---------------------------------------------------------------------------- embedded
EMBEDDED_KIND = "data/sentiment"  # entries live at <cache_dir>/data/sentiment/<hash>/


def embedded_cache_key(spec: DatasetSpec, generator_source: bytes = b"") -> dict[str, Any]:
    """What the generator's output depends on: the spec fields it may read, and its code."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_GENERATION_FIELDS}
    # Hashing the generator's source means an edited generator never reuses old rows.
    return {"spec": fields, "generator_sha256": hashlib.sha256(generator_source).hexdigest()}


def _load_embedded(spec: DatasetSpec, cache_dir: Path) -> dict[str, Dataset]:
    """Generator rows, built once per key in the shared artifact cache (atomic, locked)."""
    # Imported here: the generator is only needed for source=embedded, and a lookup at call
    # time lets tests substitute it.
    sentiment = importlib.import_module("rlhf_exp.data.sentiment")
    source_file = getattr(sentiment, "__file__", None)
    source = Path(source_file).read_bytes() if source_file else b""

    def build(tmp: Path) -> None:
        logger.info("generating the embedded sentiment task")
        rows = sentiment.generate_sentiment_task(spec)
        splits = {name: Dataset.from_list(r) for name, r in rows.items() if r}
        datasets.DatasetDict(splits).save_to_disk(str(tmp / "rows"))

    key = embedded_cache_key(spec, source)
    entry = ArtifactCache(cache_dir).get_or_build(EMBEDDED_KIND, key, build)
    # In memory: the splits are small, and later `map`s must not write into the entry.
    return dict(datasets.load_from_disk(str(entry / "rows"), keep_in_memory=True))


# ------------------------------------------------------------------------------- files
def _check_utf8(path: Path, where: str) -> None:
    """Raise if a text file is not UTF-8 (the json reader would accept it and fail later)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    opener = gzip.open if path.suffix.lower() == ".gz" else Path.open  # check what is read
    with opener(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
                offset += len(chunk)
            except UnicodeDecodeError as err:
                raise UserError(
                    f"{where} is not UTF-8 (bad byte near offset {offset + err.start}); "
                    "re-save it as UTF-8"
                ) from None
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise UserError(f"{where} is not UTF-8 (truncated character at the end)") from None


def _resolve(split: str, value: str) -> list[Path]:
    key = f"dataset.data_files.{split}"
    # Checked here too because load_task also runs without check_paths (tests, notebooks).
    if not is_glob(value) and not Path(value).expanduser().exists():
        raise UserError(f"{key}={value!r}: file not found")
    return resolve_data_files(key, value)


def _load_files(split: str, value: str, cache_dir: Path) -> Dataset:
    """One split from a file, a directory or a glob (see `config/data_files.py`)."""
    key = f"dataset.data_files.{split}"
    files = _resolve(split, value)
    fmt = file_format(files[0])
    for path in files:
        # Name the file itself when the value names several.
        where = f"{key}={value!r}" + ("" if len(files) == 1 else f" (file {str(path)!r})")
        if path.stat().st_size == 0:
            raise UserError(f"{where} is empty; dataset split {split!r} needs rows")
        if fmt != "parquet":
            _check_utf8(path, where)
    where = f"{key}={value!r}"
    try:
        # The `datasets` cache for converted files lives in our cache, not in the home dir.
        ds = datasets.load_dataset(
            fmt,
            data_files=[str(p) for p in files],
            split="train",
            cache_dir=str(cache_dir / "hf_datasets"),
            **reader_options(files, where),
        )
    except UserError:
        raise
    except Exception as err:  # the readers raise many types; the user needs one line
        if any(isinstance(e, UnicodeDecodeError) for e in _chain(err)):
            raise UserError(f"{where} is not UTF-8; re-save it as UTF-8") from None
        if "corresponds to no data" in str(err):  # e.g. a CSV with only a header
            raise UserError(f"{where} has no rows; dataset split {split!r} needs rows") from None
        if (bad := _first_bad_json_line(files)) is not None:
            raise UserError(f"{where} could not be read as JSON Lines: {bad}") from None
        raise UserError(
            f"{where} could not be read as {fmt}: {_one_line(err, innermost=True)}"
        ) from None
    return ds


def _first_bad_json_line(files: list[Path]) -> str | None:
    """`line N of FILE is not JSON (...)` for the first such line of JSON Lines `files`.

    The reader's own error names no line: pyarrow's is logged, and its pandas fallback's
    ("Trailing data") is about the whole file.
    """
    for path in files:
        if extension(path) not in (".jsonl", ".jsonl.gz"):
            continue
        opener = gzip.open if extension(path).endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    json.loads(line.rstrip("\r\n"))
                except ValueError as err:
                    return f"line {number} of {path.name} is not JSON ({err})"
    return None


def reader_options(files: list[Path], where: str) -> dict[str, Any]:
    """Options of the `datasets` reader of `files`, beyond the files (the same options find
    the same conversion in the cache): none for JSON and parquet, which carry their types;
    for CSV, those that keep every cell as the text written in the file.

    CSV has no types, so pandas guesses them: an answer "54" would become an int, "007" the
    int 7, and "None", "NA" or "null" a missing value. Declaring every column a string (from
    the header; every file must have the same columns, in any order) and turning NA parsing
    off keeps each cell as written. An empty cell is "", which the normalisers reject in a
    target column, naming the row. Columns that are not text (a KTO label) are parsed where
    they are read.
    """
    if file_format(files[0]) != "csv":
        return {}
    header: list[str] | None = None
    for path in files:
        # pandas reads the header as the builder will (quoting, BOM, .gz, duplicate names)
        names = list(pd.read_csv(path, nrows=0).columns)
        if header is not None and set(names) != set(header):
            raise UserError(
                f"{where}: file {str(path)!r} has columns [{', '.join(names)}], the first "
                f"[{', '.join(header)}]; the files of one split need the same columns"
            )
        header = header or names
    text = datasets.Features({name: datasets.Value("string") for name in header or []})
    return {"features": text, "na_filter": False}


def _files_sha256(files: list[Path]) -> str:
    """sha256 of the files' bytes in order, each preceded by its name, format and size.

    Names are relative to the deepest directory holding them all (a lone file adds none), so
    the same data at another location hashes the same, while a renamed shard (which changes
    the row order) does not. The format is the reader the extension picks (.jsonl and .json
    are both JSON). The size ends each file's bytes unambiguously.
    """
    root = Path(os.path.commonpath([p.parent for p in files]))
    digest = hashlib.sha256()
    for path in files:
        name = "" if len(files) == 1 else path.relative_to(root).as_posix()
        digest.update(f"{name}\0{file_format(path)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):  # 1 MiB at a time: data files can be large
                digest.update(chunk)
    return digest.hexdigest()


def source_fingerprint(spec: DatasetSpec) -> dict[str, Any]:
    """What the raw rows of `spec` depend on, beyond the spec's own fields, for cache keys.

    source=files: {split: sha256 of the bytes of the split's files}, so editing a file in
    place changes every key built on it; source=hub: the names that select the rows (nothing
    downloaded to hash, and the hub repo may change underneath); source=embedded: {} (the
    generator's rows are keyed by `embedded_cache_key`).
    """
    if spec.source == "files":
        return {
            split: _files_sha256(_resolve(split, value))
            for split, value in sorted(spec.data_files.items())
        }
    if spec.source == "hub":
        return {
            "hub_name": spec.hub_name,
            "hub_subset": spec.hub_subset,
            "hub_data_dir": spec.hub_data_dir,
            "hub_splits": dict(sorted(spec.hub_splits.items())),
        }
    return {}


# Bumped when a change to the splitting rules moves rows between train and held-out sides.
SPLIT_RULE = "prompt-sides-1"
# EMBEDDED_SPLIT: the embedded task's SFT rows keep their row-wise split, not following the
# pairs'. Its evaluation prompts are its own, in no training split, so the gold-reward
# comparison never leaked; but 331 of its 20,000 SFT rows have a held-out pair prompt (91 of
# the 414 held-out prompts), which following the pairs would hold out. That changes the SFT
# policy every baseline, test threshold and README result was measured from (several
# learning tests then miss their bars, seed-sensitive as they are): a re-baselining for the
# team to decide, not a side effect of fixing user data.


def split_rule(spec: DatasetSpec) -> str | None:
    """The splitting rules a stage trained on `spec` depends on, for cache keys: `SPLIT_RULE`
    when the task has two kinds of rows whose splits follow each other's prompts (see
    `_split_following`), else None (one kind of rows splits as it always has)."""
    if spec.source == "embedded":  # EMBEDDED_SPLIT
        return None
    mapping = spec.data_files if spec.source == "files" else spec.hub_splits
    kinds = set(mapping) & {"sft", "preference", "unpaired"}
    return SPLIT_RULE if len(kinds) >= 2 else None


def _chain(err: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _one_line(err: BaseException, innermost: bool) -> str:
    """`Type: first line` of `err`, or of the error at the bottom of its chain."""
    # File readers wrap the cause in "an error occurred while generating the dataset", so
    # the innermost error says what is wrong; the hub client's outer error is the clear one
    # ("Couldn't reach ... on the Hub"), its inner ones are cache-miss details.
    shown = _chain(err)[-1] if innermost else err
    text = (str(shown).strip().splitlines() or [""])[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return f"{type(shown).__name__}: {text}" if text else type(shown).__name__


# --------------------------------------------------------------------------------- hub
def _load_hub(spec: DatasetSpec, split: str, hub_split: str) -> Dataset:
    # data_dir picks a folder of the repo (Anthropic/hh-rlhf: helpful-base, harmless-base);
    # passed only when set, so repos without one see the plain call.
    extra = {"data_dir": spec.hub_data_dir} if spec.hub_data_dir else {}
    try:
        # The default `datasets` cache (HF_HOME), unlike local files: downloads already made
        # for other projects are reused, and HF_DATASETS_OFFLINE=1 can serve them offline.
        return datasets.load_dataset(spec.hub_name, spec.hub_subset, split=hub_split, **extra)
    except Exception as err:  # offline, unknown name or split, auth: one line either way
        data_dir = f", data_dir {spec.hub_data_dir!r}" if spec.hub_data_dir else ""
        raise UserError(
            f"could not load dataset {spec.hub_name!r} (subset {spec.hub_subset!r}{data_dir}, "
            f"split {hub_split!r}) from the hub: {_one_line(err, innermost=False)}; for a local "
            f"copy set dataset.source=files and dataset.data_files.{split}=<path>"
        ) from None


def mapped_splits(spec: DatasetSpec) -> set[str]:
    """The raw splits `spec` maps to files or hub splits (none for the embedded generator,
    whose rows are sft, preference and eval_prompts)."""
    mapping = {"files": spec.data_files, "hub": spec.hub_splits}.get(spec.source, {})
    return set(mapping)


def load_raw_split(spec: DatasetSpec, split: str, cache_dir: Path) -> Dataset:
    """The raw rows of one mapped split of `spec`, without reading the others."""
    only = {
        key: {s: v for s, v in getattr(spec, key).items() if s == split}
        for key in ("data_files", "hub_splits")
    }
    return load_raw(dataclasses.replace(spec, **only), cache_dir)[split]


def load_raw(spec: DatasetSpec, cache_dir: Path) -> dict[str, Dataset]:
    if spec.source == "embedded":
        return _load_embedded(spec, cache_dir)
    mapping, key = (
        (spec.data_files, "dataset.data_files")
        if spec.source == "files"
        else (spec.hub_splits, "dataset.hub_splits")
    )
    if not mapping:
        raise UserError(f"{key} is empty; map at least one of {', '.join(RAW_SPLITS)}")
    for split in mapping:
        if split not in RAW_SPLITS:
            raise UserError(
                f"{key}.{split} is an unknown split; valid splits: {', '.join(RAW_SPLITS)}"
            )
    for held_out, base in (("preference_test", "preference"), ("sft_eval", "sft")):
        if held_out in mapping and base not in mapping:
            raise UserError(f"{key}.{held_out} is set but {key}.{base} is not; set both")
    if spec.source == "files":
        return {split: _load_files(split, value, cache_dir) for split, value in mapping.items()}
    if spec.source == "hub":
        return {split: _load_hub(spec, split, name) for split, name in mapping.items()}
    raise UserError(f"dataset.source={spec.source!r} is invalid: choose embedded, files or hub")


# ----------------------------------------------------------------------------- splits
def _split_by_prompt(
    ds: Dataset, fraction: float, seed: int, split: str = "preference"
) -> tuple[Dataset, Dataset]:
    """Seeded train/test split of whole prompts, so no prompt lands on both sides.

    `fraction` is the share of distinct prompts held out (at least one, leaving at least one).
    """
    prompts = list(ds["prompt"])
    unique = list(dict.fromkeys(prompts))  # first-seen order, so the seed alone decides
    if len(unique) < 2:
        hint = " (or give a preference_test split)" if split == "preference" else ""
        raise UserError(
            f"dataset split {split!r} has {len(unique)} distinct prompt; a train/test "
            f"split needs at least 2{hint}"
        )
    random.Random(seed).shuffle(unique)
    n_test = min(len(unique) - 1, max(1, round(fraction * len(unique))))
    held_out = set(unique[:n_test])
    test_idx = [i for i, p in enumerate(prompts) if p in held_out]
    train_idx = [i for i, p in enumerate(prompts) if p not in held_out]
    return ds.select(train_idx), ds.select(test_idx)


def _split_rows(ds: Dataset, fraction: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if len(ds) < 2:
        return ds, None
    n_test = min(len(ds) - 1, max(1, round(fraction * len(ds))))
    parts = ds.train_test_split(test_size=n_test, seed=seed)
    return parts["train"], parts["test"]


@dataclass(frozen=True)
class PromptSides:
    """Prompts that splits already fixed put on the training side and on the held-out side."""

    train: frozenset[str] = frozenset()
    test: frozenset[str] = frozenset()


def prompt_sides(*splits: tuple[Dataset | None, Dataset | None]) -> PromptSides:
    """The sides of (train, held-out) dataset pairs; a prompt on both counts as training (it
    is trained on, so it can never be held out)."""
    train: set[str] = set()
    test: set[str] = set()
    for train_rows, test_rows in splits:
        train.update(train_rows["prompt"] if train_rows is not None else ())
        test.update(test_rows["prompt"] if test_rows is not None else ())
    return PromptSides(frozenset(train), frozenset(test - train))


def _split_following(
    ds: Dataset,
    sides: PromptSides,
    split: str,
    by_prompt: bool,
    fraction: float,
    seed: int,
) -> tuple[Dataset, Dataset | None]:
    """Split `ds` (rows of raw split `split`) so that its rows of prompts in `sides` land on
    the side those prompts are on; the other rows are split as without `sides` (by prompt or
    by row), so a dataset sharing no prompt with `sides` splits exactly as before."""

    def draw(rows: Dataset) -> tuple[Dataset, Dataset | None]:
        if by_prompt:
            return _split_by_prompt(rows, fraction, seed, split)
        return _split_rows(rows, fraction, seed)

    prompts = ds["prompt"]
    to_train = [i for i, p in enumerate(prompts) if p in sides.train]
    to_test = [i for i, p in enumerate(prompts) if p in sides.test]
    if not to_train and not to_test:
        return draw(ds)
    pinned = set(to_train) | set(to_test)
    rest = ds.select([i for i in range(len(ds)) if i not in pinned])
    units = len(set(rest["prompt"])) if by_prompt else len(rest)
    # With held-out rows already pinned, a remainder too small to split all trains.
    rest_train, rest_test = (rest, None) if units < 2 and to_test else draw(rest)
    logger.info(
        "dataset split %r: %d rows held out and %d kept for training because another split "
        "holds out / trains on their prompts; %d rows of other prompts split as usual",
        split,
        len(to_test),
        len(to_train),
        len(rest),
    )
    train = datasets.concatenate_datasets([ds.select(to_train), rest_train])
    tests = [part for part in (ds.select(to_test), rest_test) if part is not None and len(part)]
    return train, datasets.concatenate_datasets(tests) if tests else None


def split_unpaired(
    rows: Dataset, task: TaskData, fraction: float, seed: int
) -> tuple[Dataset, Dataset]:
    """KTO's unpaired rows held out by prompt, following the task's other splits: rows of a
    prompt the task trains on train, rows of a held-out or evaluation prompt are held out."""
    sides = prompt_sides(
        (task.sft_train, task.sft_eval),
        (task.pref_train, task.pref_test),
        (None, task.eval_prompts),
    )
    train, test = _split_following(rows, sides, "unpaired", True, fraction, seed)
    if test is None or len(test) == 0 or len(train) == 0:
        side = "held out" if len(train) == 0 else "trained on"
        raise UserError(
            f"dataset split 'unpaired': every prompt is {side} by the task's other splits, "
            "so nothing is left to train KTO on and evaluate it with; give it prompts of its own"
        )
    return train, test


def _as_sft(pref: Dataset) -> Dataset:
    return pref.select_columns(["prompt", "chosen"]).rename_column("chosen", "completion")


def _eval_from(
    ds: Dataset, target: str, n: int, tokenizer: Any, trained: frozenset[str] = frozenset()
) -> Dataset:
    """Up to `n` distinct prompts of `ds` outside `trained`, each with its first `target` as
    the reference."""
    first: dict[str, int] = {}
    skipped: set[str] = set()
    for i, prompt in enumerate(ds["prompt"]):
        if prompt in trained:  # e.g. a prompt with several SFT rows, split row-wise
            skipped.add(prompt)
            continue
        first.setdefault(prompt, i)
        if len(first) == n:
            break
    if skipped:
        logger.info(
            "evaluation prompts: %d held-out prompts skipped because a training split has them",
            len(skipped),
        )
    rows = ds.select(list(first.values()))
    references = [strip_eos(text, tokenizer) for text in rows[target]]
    return Dataset.from_dict({"prompt": list(rows["prompt"]), "reference": references})


def load_task(spec: DatasetSpec, tokenizer: Any, cache_dir: Path) -> TaskData:
    """Load, normalise and split the task `spec` describes (see the module docstring).

    `tokenizer` renders conversational data (and gains a simple chat template if it has none);
    string-only data never touches it, so `None` works there. `cache_dir` is the artifact
    cache root: it holds the embedded task's rows and the `datasets` cache for local files.
    """
    raw = load_raw(spec, Path(cache_dir))
    cols = spec.columns

    def norm(fn: Any, split: str) -> Dataset | None:
        return fn(raw[split], tokenizer, cols, split=split) if split in raw else None

    fraction, seed = spec.test_fraction, spec.seed
    # Explicit held-out splits are fixed first; each split drawn here follows the sides of
    # those already fixed, so one prompt is on one side for every stage (module docstring).
    sft, sft_eval = norm(normalize_sft, "sft"), norm(normalize_sft, "sft_eval")
    pref, pref_test = norm(normalize_preference, "preference"), None
    if pref is not None:
        pref_test = norm(normalize_preference, "preference_test")
        if pref_test is None:
            fixed = prompt_sides((sft, sft_eval)) if sft_eval is not None else PromptSides()
            pref, pref_test = _split_following(pref, fixed, "preference", True, fraction, seed)

    if sft is not None and sft_eval is None:
        follows = pref is not None and spec.source != "embedded"  # see EMBEDDED_SPLIT
        fixed = prompt_sides((pref, pref_test)) if follows else PromptSides()
        sft, sft_eval = _split_following(sft, fixed, "sft", False, fraction, seed)
    elif sft is None and pref is not None:  # SFT on the preferred answers; test stays held out
        logger.info(
            "dataset %s has no sft rows: SFT trains on prompt + chosen of its pairs", spec.name
        )
        sft, sft_eval = _as_sft(pref), _as_sft(pref_test)

    evals = norm(normalize_eval_prompts, "eval_prompts")
    if evals is not None:
        evals = evals.select(range(min(spec.n_eval_prompts, len(evals))))
    else:
        # "" (a `text`-only corpus's one prompt) says nothing, so sampling from it leaks none
        trained = prompt_sides((sft, None), (pref, None)).train - {""}
        if pref_test is not None:
            evals = _eval_from(pref_test, "chosen", spec.n_eval_prompts, tokenizer, trained)
        elif sft_eval is not None:
            evals = _eval_from(sft_eval, "completion", spec.n_eval_prompts, tokenizer, trained)

    task = TaskData(sft, sft_eval, pref, pref_test, evals, spec.gold_reward)
    sizes = {f.name: len(getattr(task, f.name) or []) for f in dataclasses.fields(task)[:-1]}
    logger.info("dataset %s (%s): %s", spec.name, spec.source, sizes)
    return task
