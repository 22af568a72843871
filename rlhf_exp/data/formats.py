"""One normalising layer between any dataset layout and the methods: TRL's explicit-prompt strings.

Every method reads the same three shapes, whatever the source looked like:

    preference    prompt, chosen, rejected    (strings; prompt + chosen is the full text)
    sft           prompt, completion          (strings)
    eval prompts  prompt, reference           (strings; reference may be "")
    unpaired      prompt, completion, label   (strings and a bool: desirable or not; KTO)

Accepted inputs, after renaming columns with `dataset.columns` (e.g. `{accepted: chosen}`):

- explicit prompt: `prompt`/`chosen`/`rejected` strings, e.g. `{"prompt": "The film was",
  "chosen": " great.", "rejected": " dull."}`. TRL's convention is that completions carry
  their own leading space, so `prompt + chosen` is the full text.
- implicit prompt: `chosen`/`rejected` full texts sharing a prefix; the prefix becomes the
  prompt (TRL's `extract_prompt`). In dialogues (Anthropic/hh-rlhf's "\n\nHuman: ...
  \n\nAssistant: ..." or the simple template's "<|assistant|>\n") the prompt ends right after
  the last assistant-turn marker the two share, so replies that open alike ("I think" /
  "I can't") still start with " I".
- conversational: lists of `{role, content}` messages, either full conversations in
  `chosen`/`rejected` (trl-lib/ultrafeedback_binarized) or `prompt` + completion message lists;
  rendered with the tokenizer's chat template (TRL's `apply_chat_template`), after
  `ensure_chat_template` gives template-less tokenizers a simple one.

Try it:

    python -c "from datasets import Dataset; from rlhf_exp.data import normalize_preference; \
rows = [{'chosen': 'The film was great.', 'rejected': 'The film was dull.'}]; \
print(normalize_preference(Dataset.from_list(rows), None, {})[0])"

String-only data never needs the tokenizer (pass `None`); conversational data does.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from typing import Any

from datasets import Dataset
from trl.data_utils import (
    apply_chat_template,
    extract_prompt,
    is_conversational,
    maybe_extract_prompt,
)

from rlhf_exp.errors import UserError

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected")
SFT_COLUMNS = ("prompt", "completion")
EVAL_COLUMNS = ("prompt", "reference")

# Used only when the tokenizer brings none (tiny models, base checkpoints). Each turn is
# "<|role|>\n{content}{eos}", turns joined by "\n"; the generation prompt opens an assistant
# turn. Ending each turn with EOS teaches the policy to stop, and generation truncates there.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + (eos_token or '') }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '\n<|assistant|>\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer: Any) -> Any:
    """Give `tokenizer` `SIMPLE_CHAT_TEMPLATE` if it has no chat template; return it.

    This mutates the tokenizer on purpose: whoever saves it next (the SFT stage) saves the
    template with it, so training, generation and later stages render chats identically.
    A tokenizer that already has a template keeps it.
    """
    if not getattr(tokenizer, "chat_template", None):
        logger.info("tokenizer has no chat template; using the simple <|role|> template")
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return tokenizer


# ------------------------------------------------------------------------------ helpers
def _columns_error(split: str, found: list[str], expected: str) -> UserError:
    return UserError(
        f"dataset split {split!r} has columns [{', '.join(found)}]; expected {expected}, "
        "or set dataset.columns to rename (e.g. {accepted: chosen})"
    )


def _prepare(ds: Dataset, columns: dict[str, str], split: str) -> Dataset:
    """Reject empty splits and apply the rename map (keys absent from this split are skipped,
    since one map serves every split)."""
    if len(ds) == 0:
        raise UserError(f"dataset split {split!r} is empty (0 rows); give it at least one row")
    rename = {old: new for old, new in columns.items() if old in ds.column_names and old != new}
    for old, new in rename.items():
        if new in ds.column_names:
            raise UserError(
                f"dataset.columns renames {old!r} to {new!r}, but split {split!r} already has "
                f"both columns [{', '.join(ds.column_names)}]; drop one or change the rename"
            )
    return ds.rename_columns(rename) if rename else ds


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in value
    )


# Columns that hold what a model is trained or scored to produce; empty ones teach nothing
# and break TRL's prefix extraction, so they are rejected.
_TARGET_COLUMNS = {"chosen", "rejected", "completion", "text"}


def _check_row(example: dict[str, Any], index: int, split: str) -> None:
    """Each value must be a string or a non-empty list of {role, content} messages."""
    for column, value in example.items():
        if value == "" and column in _TARGET_COLUMNS:
            raise UserError(f"dataset split {split!r} row {index} column {column!r} is empty")
        if isinstance(value, str) or (_is_messages(value) and value):
            continue
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise UserError(
            f"dataset split {split!r} row {index} column {column!r} holds {shown} "
            f"({type(value).__name__}); expected a string or a list of {{role, content}} messages"
        )


def strip_eos(text: str, tokenizer: Any) -> str:
    """A reference is what a model should say; generation drops EOS, so the reference does too."""
    eos = getattr(tokenizer, "eos_token", None)
    return text.removesuffix(eos) if eos else text


def _template(example: dict[str, Any], tokenizer: Any) -> dict[str, str]:
    if tokenizer is None:
        raise UserError("conversational data needs a tokenizer to render its chat template")
    ensure_chat_template(tokenizer)
    return apply_chat_template(example, tokenizer)


def _normalize(
    ds: Dataset,
    keep: list[str],
    row_fn: Callable[[dict[str, Any], int], dict[str, str]],
    out: tuple[str, ...],
    desc: str,
) -> Dataset:
    # Drop unused columns first: map then never decodes them, and they cannot leak through.
    ds = ds.select_columns(keep)
    ds = ds.map(row_fn, with_indices=True, remove_columns=keep, desc=desc)
    return ds.select_columns(list(out))  # a fixed column order, whatever the input's


# --------------------------------------------------------------------------- preference
# Where an assistant reply begins in a flattened dialogue: HH-RLHF's "\n\nAssistant:" (any
# casing) and the assistant turn SIMPLE_CHAT_TEMPLATE opens.
_ASSISTANT_TURN = re.compile(r"\n\nassistant:|<\|assistant\|>\n", re.IGNORECASE)


def _split_implicit(chosen: str, rejected: str) -> dict[str, str]:
    """Prompt and completions of two full texts: the prompt is their shared prefix, cut back
    to just after the last assistant-turn marker in it when there is one.

    The character-level common prefix alone ends inside the reply whenever both replies open
    with the same words ("I think..." / "I can't..."); cutting at the turn boundary gives
    every row the same kind of prompt, as generation will see it. Identical texts (ties,
    dropped later) split there too, into equal completions.
    """
    turns = list(_ASSISTANT_TURN.finditer(os.path.commonprefix([chosen, rejected])))
    if not turns:
        return extract_prompt({"chosen": chosen, "rejected": rejected})
    cut = turns[-1].end()
    return {"prompt": chosen[:cut], "chosen": chosen[cut:], "rejected": rejected[cut:]}


def _preference_row(example: dict[str, Any], index: int, tokenizer: Any, split: str) -> dict:
    _check_row(example, index, split)
    prompt, chosen, rejected = example.get("prompt"), example["chosen"], example["rejected"]
    # Mixed layouts: a message-list prompt with string completions, or a string prompt with
    # assistant-only message lists. Lift the strings to messages so TRL sees one layout.
    if isinstance(prompt, list) and isinstance(chosen, str) and isinstance(rejected, str):
        chosen = [{"role": "assistant", "content": chosen}]
        rejected = [{"role": "assistant", "content": rejected}]
    if isinstance(prompt, str) and isinstance(chosen, list) and chosen[0]["role"] == "assistant":
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise UserError(
            f"dataset split {split!r} row {index}: chosen and rejected must both be strings "
            "or both be message lists"
        )
    example = {"chosen": chosen, "rejected": rejected}
    if prompt is not None:
        example["prompt"] = prompt
    # Implicit prompts (and string prompts beside full conversations, as in
    # HuggingFaceH4/ultrafeedback_binarized) become the shared prefix of chosen and rejected.
    one_text = isinstance(chosen, str) and chosen == rejected
    if prompt is None and one_text and not _ASSISTANT_TURN.search(chosen):
        # One text twice and no turn marker: nothing tells prompt from reply (the shared
        # prefix would be the text minus its last character). `normalize_preference` drops
        # and counts such rows; as SFT data the text is the completion of an empty prompt.
        return {"prompt": "", "chosen": chosen, "rejected": rejected, UNSPLIT: True}
    if prompt is None and isinstance(chosen, str):
        extracted = _split_implicit(chosen, rejected)
    else:
        extracted = maybe_extract_prompt(example)
    if extracted is not example:
        # An exact tie may have no prefix left to share (a one-character text): it is kept
        # for the tokenised stage to count and drop, rather than failing the whole load.
        ok = (extracted["prompt"] or chosen == rejected) and all(
            extracted["prompt"] + extracted[k] == example[k] for k in ("chosen", "rejected")
        )
        if not ok:  # no shared prefix, or TRL's space handling cut it inconsistently
            raise UserError(
                f"dataset split {split!r} row {index}: chosen and rejected share no prefix to "
                "use as the prompt; add a prompt column"
            )
    if is_conversational(extracted):
        extracted = _template(extracted, tokenizer)
    return {**{k: extracted[k] for k in PREFERENCE_COLUMNS}, UNSPLIT: False}


# Column `_preference_row` marks rows with: one text as chosen and rejected, no prompt to split.
UNSPLIT = "unsplit"


def normalize_preference(
    ds: Dataset, tokenizer: Any, columns: dict[str, str], split: str = "preference"
) -> Dataset:
    """Rows with exactly the string columns prompt, chosen, rejected (see the module docstring).

    `split` only names the split in error messages.
    """
    ds = _prepare(ds, columns, split)
    found = ds.column_names
    if not {"chosen", "rejected"} <= set(found):
        raise _columns_error(split, found, "prompt/chosen/rejected, chosen/rejected")
    keep = [c for c in PREFERENCE_COLUMNS if c in found]
    ds = _normalize(
        ds,
        keep,
        lambda ex, i: _preference_row(ex, i, tokenizer, split),
        (*PREFERENCE_COLUMNS, UNSPLIT),
        f"normalising {split}",
    )
    return _drop_unsplittable(ds, split)


def _drop_unsplittable(ds: Dataset, split: str) -> Dataset:
    """Drop (and count) the rows `_preference_row` could not split into prompt and reply: the
    same text as chosen and rejected, without a prompt column or a turn marker."""
    kept = [i for i, unsplit in enumerate(ds[UNSPLIT]) if not unsplit]
    ds = ds.remove_columns(UNSPLIT) if len(kept) == len(ds) else ds
    if len(kept) == len(ds):
        return ds
    dropped = len(ds) - len(kept)
    what = (
        "have the same text as chosen and rejected and no prompt column: no preference to "
        "learn, and nothing to tell the prompt from the reply"
    )
    if not kept:
        raise UserError(
            f"dataset split {split!r}: all {dropped} rows {what}; check the file (a prompt "
            "column under another name? map it with dataset.columns)"
        )
    logger.warning("dataset split %r: dropped %d of %d rows that %s", split, dropped, len(ds), what)
    return ds.select(kept).remove_columns(UNSPLIT).flatten_indices()


# ---------------------------------------------------------------------------------- sft
def _prompt_completion_row(example: dict[str, Any], index: int, tokenizer: Any, split: str):
    _check_row(example, index, split)
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(prompt, list) and isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    if isinstance(prompt, str) and isinstance(completion, list):
        prompt = [{"role": "user", "content": prompt}]
    example = {"prompt": prompt, "completion": completion}
    if is_conversational(example):
        example = _template(example, tokenizer)
    return {"prompt": example["prompt"], "completion": example["completion"]}


def _messages_row(example: dict[str, Any], index: int, tokenizer: Any, split: str):
    """The last assistant turn is the completion; every turn before it is the prompt."""
    _check_row(example, index, split)
    messages = example["messages"]
    if not isinstance(messages, list):
        raise UserError(
            f"dataset split {split!r} row {index} column 'messages' holds a string; "
            "expected a list of {role, content} messages"
        )
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if not last:  # None: no assistant turn; 0: nothing before it to prompt with
        raise UserError(
            f"dataset split {split!r} row {index}: messages need an assistant turn after "
            "at least one other turn"
        )
    pair = {"prompt": messages[:last], "completion": [messages[last]]}
    return _prompt_completion_row(pair, index, tokenizer, split)


def _sft_row_fn(found: list[str], tokenizer: Any, split: str, expected: str):
    """Pick the row converter from the columns present; returns (columns to keep, fn)."""
    cols = set(found)
    if {"prompt", "completion"} <= cols:
        return ["prompt", "completion"], lambda ex, i: _prompt_completion_row(
            ex, i, tokenizer, split
        )
    if "messages" in cols:
        return ["messages"], lambda ex, i: _messages_row(ex, i, tokenizer, split)
    if {"chosen", "rejected"} <= cols:  # preference rows: the chosen answer is the target

        def from_preference(ex: dict[str, Any], i: int) -> dict[str, str]:
            row = _preference_row(ex, i, tokenizer, split)  # prompt "" when it has none
            return {"prompt": row["prompt"], "completion": row["chosen"]}

        return [c for c in PREFERENCE_COLUMNS if c in cols], from_preference
    if {"prompt", "chosen"} <= cols:

        def from_chosen(ex: dict[str, Any], i: int) -> dict[str, str]:
            pair = {"prompt": ex["prompt"], "completion": ex["chosen"]}
            return _prompt_completion_row(pair, i, tokenizer, split)

        return ["prompt", "chosen"], from_chosen
    if "text" in cols:

        def from_text(ex: dict[str, Any], i: int) -> dict[str, str]:
            _check_row(ex, i, split)
            if not isinstance(ex["text"], str):
                raise UserError(f"dataset split {split!r} row {i} column 'text': expected a string")
            return {"prompt": "", "completion": ex["text"]}

        return ["text"], from_text
    raise _columns_error(split, found, expected)


_SFT_EXPECTED = "prompt/completion, messages, prompt/chosen/rejected, chosen/rejected, or text"


def normalize_sft(
    ds: Dataset, tokenizer: Any, columns: dict[str, str], split: str = "sft"
) -> Dataset:
    """Rows with exactly the string columns prompt, completion.

    Accepts prompt/completion, a conversational `messages` column (last assistant turn is the
    completion), preference rows (chosen is the completion, so preference-only data still
    yields SFT data) and a plain `text` column (prompt "").
    """
    ds = _prepare(ds, columns, split)
    keep, fn = _sft_row_fn(ds.column_names, tokenizer, split, _SFT_EXPECTED)
    return _normalize(ds, keep, fn, SFT_COLUMNS, f"normalising {split}")


# ----------------------------------------------------------------------------- unpaired
UNPAIRED_COLUMNS = ("prompt", "completion", "label")


# A label as text (CSV has no booleans: every cell is read as written) or as a JSON 0/1.
_LABEL_TEXT = {"true": True, "false": False, "1": True, "0": False}


def parse_label(value: Any, index: int, split: str = "unpaired") -> bool:
    """An unpaired row's label as a bool: true/false, or its text in any case, or 1/0."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _LABEL_TEXT:
        return _LABEL_TEXT[value.strip().lower()]
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UserError(
        f"dataset split {split!r} row {index} column 'label' holds {value!r}; "
        "expected true or false"
    )


def normalize_unpaired(
    ds: Dataset, tokenizer: Any, columns: dict[str, str], split: str = "unpaired"
) -> Dataset:
    """Rows with exactly prompt, completion (strings, as `normalize_sft` makes them) and label
    (a bool: whether the completion is desirable), the unpaired feedback KTO learns from.

    A label may be a bool, 1/0, or their text in any case ("true", "False", "1": a CSV file
    holds nothing else); anything else is refused, naming the row."""
    ds = _prepare(ds, columns, split)
    if not set(UNPAIRED_COLUMNS) <= set(ds.column_names):
        raise _columns_error(split, ds.column_names, "prompt/completion/label (label true/false)")

    def row(example: dict[str, Any], index: int) -> dict[str, Any]:
        label = parse_label(example["label"], index, split)
        text = {k: example[k] for k in ("prompt", "completion")}
        return {**_prompt_completion_row(text, index, tokenizer, split), "label": label}

    return _normalize(ds, list(UNPAIRED_COLUMNS), row, UNPAIRED_COLUMNS, f"normalising {split}")


# ------------------------------------------------------------------------- eval prompts
def _prompt_only_row(example: dict[str, Any], index: int, tokenizer: Any, split: str):
    reference = example.get("reference")
    reference = "" if reference is None else reference  # an empty cell means "unknown"
    _check_row({"prompt": example["prompt"]}, index, split)
    if not isinstance(reference, str):
        raise UserError(
            f"dataset split {split!r} row {index} column 'reference' holds "
            f"{type(reference).__name__}; expected a string"
        )
    prompt = example["prompt"]
    if isinstance(prompt, list):  # open an assistant turn, as generation will continue it
        prompt = _template({"prompt": prompt}, tokenizer)["prompt"]
    return {"prompt": prompt, "reference": reference}


def normalize_eval_prompts(
    ds: Dataset, tokenizer: Any, columns: dict[str, str], split: str = "eval_prompts"
) -> Dataset:
    """Rows with exactly the string columns prompt, reference.

    A `prompt` column alone (optionally with `reference`) is taken as is, reference "" when
    absent. Any SFT or preference layout also works: the completion (chosen, for preference
    rows) becomes the reference, without a trailing EOS token.
    """
    ds = _prepare(ds, columns, split)
    found = ds.column_names
    has_target = {"completion", "chosen", "messages"} & set(found)
    if "prompt" in found and ("reference" in found or not has_target):
        keep = [c for c in EVAL_COLUMNS if c in found]
        fn = lambda ex, i: _prompt_only_row(ex, i, tokenizer, split)  # noqa: E731
    else:
        keep, sft_fn = _sft_row_fn(found, tokenizer, split, "prompt[/reference], " + _SFT_EXPECTED)

        def fn(ex: dict[str, Any], i: int) -> dict[str, str]:
            row = sft_fn(ex, i)
            return {"prompt": row["prompt"], "reference": strip_eos(row["completion"], tokenizer)}

    return _normalize(ds, keep, fn, EVAL_COLUMNS, f"normalising {split}")
