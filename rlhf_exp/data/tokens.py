"""Token budgets: the one rule every method, scorer and report uses to fit text into a model.

Real preference data is long dialogues whose replies differ only at the end. Cutting the
joined text from the right (what trainers do by default) throws away exactly the part that
differs, so chosen and rejected become the same tokens. The rule here, `TokenBudget.cut`:

- prompt and completion are tokenised apart (as generation sees them: the policy continues
  the prompt's tokens), the completion ends in EOS when it is kept whole;
- each completion keeps its first `max(max_completion_length, max_length - prompt tokens)`
  tokens: its own budget, or more when the prompt is short;
- the prompt keeps its last `max_length - longest kept completion` tokens: cut from the
  left, because the end of a dialogue is what the reply answers.

A pair whose chosen and rejected are the same tokens after this is a tie: it carries no
preference, so it is dropped and counted (never trained on or scored). Tokenised splits are
cached in the artifact cache, keyed by their rows, the tokenizer and the budget.

    python -c "from rlhf_exp.data.tokens import TokenBudget; \
print(TokenBudget(8, 3).cut(list(range(10)), [[11, 12, 13, 14], [21]]))"
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
from datasets import Dataset

from rlhf_exp.artifacts import ArtifactCache, atomic_write_text
from rlhf_exp.errors import UserError

log = logging.getLogger(__name__)

# Bump when the tokenisation below changes, so cached splits are rebuilt.
TOKENIZE_VERSION = 1
TOKENIZED_KIND = "data/tokenized"


@dataclass(frozen=True)
class TokenBudget:
    """`max_length` tokens of prompt + completion; see the module docstring for the rule."""

    max_length: int
    max_completion_length: int

    def __post_init__(self) -> None:
        if not 0 < self.max_completion_length < self.max_length:
            raise ValueError(
                f"max_completion_length={self.max_completion_length} must be in "
                f"(0, max_length={self.max_length})"
            )

    def cut(
        self, prompt: list[int], completions: Sequence[list[int]]
    ) -> tuple[list[int], list[list[int]]]:
        """(prompt's kept tail, each completion's kept head) under this budget."""
        own = max(self.max_completion_length, self.max_length - len(prompt))
        kept = [c[:own] for c in completions]
        room = self.max_length - max((len(c) for c in kept), default=0)
        return (prompt[-room:] if room > 0 else []), kept


def encode(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, without special tokens added (templates bring their own)."""
    # verbose=False: texts longer than the model are expected here; they are cut afterwards.
    return tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]


def with_eos(ids: list[int], eos_id: int) -> list[int]:
    """A completion ends in EOS, so the model learns to stop and the RM scores the end."""
    return ids if ids and ids[-1] == eos_id else [*ids, eos_id]


def fit_prompts(tokenizer: Any, prompts: Sequence[str], max_tokens: int) -> list[list[int]]:
    """Each prompt's last `max_tokens` tokens: what generation may condition on."""
    if max_tokens < 1:
        raise ValueError(f"no room for the prompt: max_tokens={max_tokens}")
    return [ids[-max_tokens:] for ids in encode(tokenizer, prompts)]


# ------------------------------------------------------------------------------ batches
def _preference_batch(batch: dict[str, list], tokenizer: Any, budget: TokenBudget) -> dict:
    eos = tokenizer.eos_token_id
    prompts = encode(tokenizer, batch["prompt"])
    chosen = [with_eos(c, eos) for c in encode(tokenizer, batch["chosen"])]
    rejected = [with_eos(r, eos) for r in encode(tokenizer, batch["rejected"])]
    out: dict[str, list] = {k: [] for k in _PREFERENCE_OUT}
    for p, c, r in zip(prompts, chosen, rejected, strict=True):
        kept_p, (kept_c, kept_r) = budget.cut(p, [c, r])
        out["prompt_ids"].append(kept_p)
        out["chosen_ids"].append(kept_c)
        out["rejected_ids"].append(kept_r)
        out["prompt_tokens"].append(len(p))
        out["chosen_tokens"].append(len(c))
        out["rejected_tokens"].append(len(r))
        out["prompt_cut"].append(len(kept_p) < len(p))
        out["completion_cut"].append(len(kept_c) < len(c) or len(kept_r) < len(r))
        out["tie"].append(kept_c == kept_r)
    return out


_PREFERENCE_OUT = (
    "prompt_ids",
    "chosen_ids",
    "rejected_ids",
    "prompt_tokens",
    "chosen_tokens",
    "rejected_tokens",
    "prompt_cut",
    "completion_cut",
    "tie",
)


def _sft_batch(batch: dict[str, list], tokenizer: Any, budget: TokenBudget) -> dict:
    eos = tokenizer.eos_token_id
    prompts = encode(tokenizer, batch["prompt"])
    completions = [with_eos(c, eos) for c in encode(tokenizer, batch["completion"])]
    out: dict[str, list] = {k: [] for k in _SFT_OUT}
    for p, c in zip(prompts, completions, strict=True):
        kept_p, (kept_c,) = budget.cut(p, [c])
        out["input_ids"].append(kept_p + kept_c)
        out["completion_mask"].append([0] * len(kept_p) + [1] * len(kept_c))
        out["prompt_tokens"].append(len(p))
        out["completion_tokens"].append(len(c))
        out["prompt_cut"].append(len(kept_p) < len(p))
        out["completion_cut"].append(len(kept_c) < len(c))
    return out


_SFT_OUT = (
    "input_ids",
    "completion_mask",
    "prompt_tokens",
    "completion_tokens",
    "prompt_cut",
    "completion_cut",
)
_STAT_COLUMNS = {
    "prompt_tokens",
    "chosen_tokens",
    "rejected_tokens",
    "completion_tokens",
    "prompt_cut",
    "completion_cut",
    "tie",
}


# -------------------------------------------------------------------------------- stats
def _percentiles(values: Sequence[int]) -> dict[str, float]:
    a = np.asarray(values)
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "max": a.max()}


def _stats(ds: Dataset, length_columns: Sequence[str]) -> dict[str, float]:
    """Per split: rows, token-length percentiles before cutting, fractions cut, ties."""
    out: dict[str, float] = {"rows": len(ds)}
    for column in length_columns:
        for name, value in _percentiles(ds[column]).items():
            out[f"{column.removesuffix('_tokens')}_tokens_{name}"] = float(value)
    out["prompt_truncated_fraction"] = float(np.mean(ds["prompt_cut"]))
    out["completion_truncated_fraction"] = float(np.mean(ds["completion_cut"]))
    return out


# --------------------------------------------------------------------------------- cache
def rows_hash(ds: Dataset) -> str:
    """sha256 of a dataset's rows (its Arrow data as selected), whatever their origin."""
    table = ds.with_format("arrow")[:]  # only the selected rows, in order
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of what decides token ids: the vocabulary and rules, special tokens, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    rules = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab())
    parts = [rules, str(tokenizer.eos_token_id), str(getattr(tokenizer, "chat_template", ""))]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


@dataclass
class Tokenized:
    """A tokenised split: the rows a trainer takes, which source rows they are, and stats."""

    dataset: Dataset  # prompt_ids/chosen_ids/rejected_ids, or input_ids/completion_mask
    kept: list[int]  # indices into the source split of the rows in `dataset`
    stats: dict[str, float]  # see `_stats`; preference splits add dropped_ties


def tokenize_split(
    ds: Dataset,
    kind: str,
    tokenizer: Any,
    budget: TokenBudget,
    *,
    cache: ArtifactCache | None = None,
    num_proc: int | None = None,
    split: str = "",
) -> Tokenized:
    """Tokenise `ds` (`kind` "preference" or "sft" rows) under `budget`, dropping ties.

    With `cache`, the result is stored keyed by the rows, the tokenizer and the budget, and
    later runs with the same three load it instead.
    """
    if kind not in ("preference", "sft"):
        raise ValueError(f"kind must be preference or sft, not {kind!r}")
    key = {
        "kind": kind,
        "rows": rows_hash(ds),
        "tokenizer": tokenizer_hash(tokenizer),
        "budget": asdict(budget),
        "version": TOKENIZE_VERSION,
    }

    def build(out: Path) -> None:
        fn = _preference_batch if kind == "preference" else _sft_batch
        names = _PREFERENCE_OUT if kind == "preference" else _SFT_OUT
        full = ds.map(
            fn,
            batched=True,
            batch_size=1000,
            fn_kwargs={"tokenizer": tokenizer, "budget": budget},
            remove_columns=ds.column_names,
            num_proc=num_proc if num_proc and len(ds) >= 2 * num_proc else None,
            desc=f"tokenising {split or kind} ({len(ds)} rows)",
        )
        full = full.select_columns(list(names))
        lengths = ["prompt_tokens"] + (
            ["chosen_tokens", "rejected_tokens"] if kind == "preference" else ["completion_tokens"]
        )
        stats = _stats(full, lengths)
        kept = list(range(len(full)))
        if kind == "preference":
            kept = [i for i, tie in enumerate(full["tie"]) if not tie]
            stats["dropped_ties"] = float(len(full) - len(kept))
        rows = full.select(kept).remove_columns([c for c in names if c in _STAT_COLUMNS])
        if kept:  # `datasets` cannot load an empty saved table back into memory
            rows.save_to_disk(str(out / "rows"))
        meta = {"kept": kept, "stats": stats, "columns": rows.column_names}
        atomic_write_text(out / "meta.json", json.dumps(meta))

    if cache is None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
            return _load(Path(tmp))
    entry = cache.get_or_build(TOKENIZED_KIND, key, build)
    return _load(entry)


def _load(entry: Path) -> Tokenized:
    meta = json.loads((entry / "meta.json").read_text())
    if not meta["kept"]:
        return Tokenized(Dataset.from_dict({c: [] for c in meta["columns"]}), [], meta["stats"])
    # In memory: later maps (TRL's) must not write cache files into the entry.
    dataset = datasets.load_from_disk(str(entry / "rows"), keep_in_memory=True)
    return Tokenized(dataset, meta["kept"], meta["stats"])


def require_rows(tokenized: Tokenized, split: str, knobs: str) -> None:
    """One line when cutting and tie-dropping left nothing to train or score on."""
    if len(tokenized.dataset) == 0:
        dropped = int(tokenized.stats.get("dropped_ties", 0))
        raise UserError(
            f"dataset split {split!r}: none of its {int(tokenized.stats['rows'])} rows is "
            f"usable ({dropped} pairs have identical chosen and rejected after tokenising and "
            f"cutting to the token budget); check the data, or raise {knobs}"
        )


def joined(pairs: Dataset) -> Dataset:
    """Tokenised pairs as a reward model reads them: `chosen_ids`/`rejected_ids` = prompt +
    completion (TRL `RewardTrainer`'s pre-tokenised layout)."""

    def join(batch: dict[str, list]) -> dict[str, list]:
        return {
            side: [p + c for p, c in zip(batch["prompt_ids"], batch[side], strict=True)]
            for side in ("chosen_ids", "rejected_ids")
        }

    return pairs.map(join, batched=True, remove_columns=["prompt_ids"], desc="joining pairs")
