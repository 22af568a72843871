"""Every accepted layout normalises to TRL's explicit-prompt strings, identically."""

from __future__ import annotations

import pytest
from datasets import Dataset

from rlhf_exp.data import (
    ensure_chat_template,
    normalize_eval_prompts,
    normalize_preference,
    normalize_sft,
)
from rlhf_exp.data.formats import SIMPLE_CHAT_TEMPLATE
from rlhf_exp.errors import UserError

EOS = "<|endoftext|>"  # the bpe_tokenizer fixture's


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text.strip()}


def templated(prompt: str, answer: str) -> dict[str, str]:
    """What the simple template renders for one user turn and one assistant answer."""
    return {
        "prompt": f"<|user|>\n{prompt}{EOS}\n<|assistant|>\n",
        "answer": f"{answer.strip()}{EOS}",
    }


def chat_rows(toy: list[tuple[str, str, str]]) -> list[dict[str, str]]:
    """What every conversational layout of the toy set normalises to."""
    return [
        {
            "prompt": templated(p, c)["prompt"],
            "chosen": templated(p, c)["answer"],
            "rejected": templated(p, r)["answer"],
        }
        for p, c, r in toy
    ]


# ------------------------------------------------------------------------------ preference
def test_string_layouts_normalise_to_identical_rows(bpe_tokenizer, toy, toy_rows):
    explicit = Dataset.from_list(toy_rows)
    implicit = Dataset.from_list([{"chosen": p + c, "rejected": p + r} for p, c, r in toy])
    renamed = Dataset.from_list(
        [{"id": i, "prompt": p, "accepted": c, "rejected": r} for i, (p, c, r) in enumerate(toy)]
    )
    rename = {"accepted": "chosen"}
    for ds in (explicit, implicit, renamed):
        out = normalize_preference(ds, bpe_tokenizer, rename)
        assert out.column_names == ["prompt", "chosen", "rejected"]
        assert out.to_list() == toy_rows
    assert bpe_tokenizer.chat_template is None  # string data never needs a template


def test_conversational_layouts_normalise_to_identical_rows(bpe_tokenizer, toy):
    full = [  # trl-lib/ultrafeedback_binarized: whole conversations
        {
            "chosen": [user(p), assistant(c)],
            "rejected": [user(p), assistant(r)],
            "score_chosen": 8.0,
            "score_rejected": 3.5,
        }
        for p, c, r in toy
    ]
    h4 = [  # HuggingFaceH4 layout: a string prompt beside whole conversations
        {"prompt": p, "prompt_id": str(i), "messages": row["chosen"], **row}
        for i, ((p, _, _), row) in enumerate(zip(toy, full, strict=True))
    ]
    split = [
        {"prompt": [user(p)], "chosen": [assistant(c)], "rejected": [assistant(r)]}
        for p, c, r in toy
    ]
    mixed = [{"prompt": [user(p)], "chosen": c.strip(), "rejected": r.strip()} for p, c, r in toy]
    for rows in (full, h4, split, mixed):
        out = normalize_preference(Dataset.from_list(rows), bpe_tokenizer, {})
        assert out.column_names == ["prompt", "chosen", "rejected"]
        assert out.to_list() == chat_rows(toy)


def test_ensure_chat_template_sets_one_only_when_missing(bpe_tokenizer):
    assert ensure_chat_template(bpe_tokenizer).chat_template == SIMPLE_CHAT_TEMPLATE
    text = bpe_tokenizer.apply_chat_template(
        [user("Hi"), assistant("Hello")], tokenize=False, add_generation_prompt=False
    )
    assert text == f"<|user|>\nHi{EOS}\n<|assistant|>\nHello{EOS}"
    bpe_tokenizer.chat_template = "{{ messages[0]['content'] }}"
    assert ensure_chat_template(bpe_tokenizer).chat_template == "{{ messages[0]['content'] }}"


def test_missing_columns_names_found_and_expected(bpe_tokenizer):
    ds = Dataset.from_list([{"question": "q", "answer": "a"}])
    with pytest.raises(UserError) as err:
        normalize_preference(ds, bpe_tokenizer, {})
    msg = str(err.value)
    assert "'preference' has columns [question, answer]" in msg
    assert "expected prompt/chosen/rejected, chosen/rejected" in msg
    assert "dataset.columns" in msg


def test_rename_onto_an_existing_column_is_an_error(bpe_tokenizer):
    ds = Dataset.from_list([{"prompt": "p", "accepted": " a", "chosen": " b", "rejected": " c"}])
    with pytest.raises(UserError, match="renames 'accepted' to 'chosen'"):
        normalize_preference(ds, bpe_tokenizer, {"accepted": "chosen"})


def test_empty_split_is_an_error(bpe_tokenizer):
    ds = Dataset.from_dict({"prompt": [], "chosen": [], "rejected": []})
    with pytest.raises(UserError, match="split 'preference' is empty"):
        normalize_preference(ds, bpe_tokenizer, {})
    with pytest.raises(UserError, match="split 'sft' is empty"):
        normalize_sft(Dataset.from_dict({"text": []}), bpe_tokenizer, {})


def test_non_string_values_are_an_error(bpe_tokenizer, toy_rows):
    numbers = Dataset.from_dict({"prompt": ["p", "q"], "chosen": [1, 2], "rejected": [" r", " s"]})
    with pytest.raises(UserError, match=r"row 0 column 'chosen' holds 1 \(int\)"):
        normalize_preference(numbers, bpe_tokenizer, {})
    missing = [*toy_rows[:2], {"prompt": "p", "chosen": None, "rejected": " r"}]  # empty CSV cell
    with pytest.raises(UserError, match=r"row 2 column 'chosen' holds None"):
        normalize_preference(Dataset.from_list(missing), bpe_tokenizer, {})


def test_implicit_rows_without_a_shared_prefix_are_an_error(bpe_tokenizer):
    ds = Dataset.from_list([{"chosen": "Yes, gladly.", "rejected": "No."}])
    with pytest.raises(UserError, match="share no prefix"):
        normalize_preference(ds, bpe_tokenizer, {})


def hh(*turns: str) -> str:
    """An Anthropic/hh-rlhf text: alternating Human / Assistant turns, Human first."""
    roles = ("Human", "Assistant")
    return "".join(f"\n\n{roles[i % 2]}: {turn}" for i, turn in enumerate(turns))


def test_implicit_dialogues_split_at_the_last_shared_assistant_turn(bpe_tokenizer):
    dialogue = ("Hi there.", "Hello! How can I help?", "Name a film.")
    chosen = hh(*dialogue, "I would suggest Jaws.")
    rejected = hh(*dialogue, "I don't know any films.")  # same first word: "I"
    out = normalize_preference(
        Dataset.from_list([{"chosen": chosen, "rejected": rejected}]), bpe_tokenizer, {}
    )
    assert out[0] == {
        "prompt": hh(*dialogue) + "\n\nAssistant:",
        "chosen": " I would suggest Jaws.",
        "rejected": " I don't know any films.",
    }
    # The same with lower-case roles and with the simple chat template's turns.
    lower = {k: v.replace("Human:", "human:") for k, v in out[0].items()}
    lower = {k: v.replace("Assistant:", "assistant:") for k, v in lower.items()}
    row = {
        "chosen": lower["prompt"] + lower["chosen"],
        "rejected": lower["prompt"] + lower["rejected"],
    }
    assert normalize_preference(Dataset.from_list([row]), bpe_tokenizer, {})[0] == lower
    prompt = f"<|user|>\nName a film.{EOS}\n<|assistant|>\n"
    row = {"chosen": prompt + f"I like Jaws.{EOS}", "rejected": prompt + f"I hate films.{EOS}"}
    assert normalize_preference(Dataset.from_list([row]), bpe_tokenizer, {})[0] == {
        "prompt": prompt,
        "chosen": f"I like Jaws.{EOS}",
        "rejected": f"I hate films.{EOS}",
    }


def test_implicit_rows_without_turn_markers_keep_the_common_prefix_rule(bpe_tokenizer):
    from trl.data_utils import extract_prompt

    rows = [
        {"chosen": "The film was great.", "rejected": "The film was dull."},
        {"chosen": "I liked it a lot.", "rejected": "I hated it."},  # the prompt is "I"
        {"chosen": "Human: hi Assistant: yes", "rejected": "Human: hi Assistant: no"},
    ]
    out = normalize_preference(Dataset.from_list(rows), bpe_tokenizer, {}).to_list()
    assert out == [extract_prompt(r) for r in rows]
    assert out[1] == {"prompt": "I", "chosen": " liked it a lot.", "rejected": " hated it."}


def test_identical_texts_are_kept_as_ties_when_a_turn_marks_the_prompt(bpe_tokenizer, caplog):
    dialogue = hh("Name a film.", "Jaws.")
    rows = [
        {"chosen": dialogue, "rejected": dialogue},
        # One text twice, no turn marker: the shared prefix would be the text minus its last
        # character. Dropped and counted, never split there.
        {"chosen": "Same text.", "rejected": "Same text."},
        {"chosen": "x", "rejected": "x"},
    ]
    out = normalize_preference(Dataset.from_list(rows), bpe_tokenizer, {}).to_list()
    prompt = hh("Name a film.") + "\n\nAssistant:"
    assert out == [{"prompt": prompt, "chosen": " Jaws.", "rejected": " Jaws."}]
    assert "dropped 2 of 3 rows that have the same text as chosen and rejected" in caplog.text
    # As SFT data such a text is a completion of the empty prompt, whole.
    sft = normalize_sft(Dataset.from_list(rows[1:]), bpe_tokenizer, {}).to_list()
    assert sft == [{"prompt": "", "completion": "Same text."}, {"prompt": "", "completion": "x"}]


def test_only_unsplittable_identical_texts_are_refused_with_a_count(bpe_tokenizer):
    rows = [{"chosen": f"Same text {i}.", "rejected": f"Same text {i}."} for i in range(3)]
    with pytest.raises(UserError, match=r"'preference': all 3 rows have the same text"):
        normalize_preference(Dataset.from_list(rows), bpe_tokenizer, {})


def test_synthetic_hh_rows_all_get_turn_boundary_prompts(bpe_tokenizer):
    from rlhf_exp.data.synthetic_dialogues import hh_like_rows

    rows = hh_like_rows(200, seed=0)
    out = normalize_preference(Dataset.from_list(rows), bpe_tokenizer, {}).to_list()
    for row, original in zip(out, rows, strict=True):
        assert row["prompt"].endswith("\n\nAssistant:")
        assert row["prompt"] + row["rejected"] == original["rejected"]
        assert row["chosen"].startswith(" ") and "\n\nAssistant:" not in row["chosen"]
    # Where both replies open with "I", the character prefix alone would end inside them.
    assert sum(r["chosen"].startswith(" I ") and r["rejected"].startswith(" I ") for r in out) > 20


# ------------------------------------------------------------------------------------- sft
def test_sft_layouts_normalise_to_identical_rows(bpe_tokenizer, toy, toy_rows):
    expected = [{"prompt": p, "completion": c} for p, c, _ in toy]
    layouts = [
        [{"prompt": p, "completion": c} for p, c, _ in toy],
        toy_rows,  # preference rows: chosen is the completion
        [{"prompt": p, "chosen": c} for p, c, _ in toy],
        [{"chosen": p + c, "rejected": p + r} for p, c, r in toy],
    ]
    for rows in layouts:
        out = normalize_sft(Dataset.from_list(rows), bpe_tokenizer, {})
        assert out.column_names == ["prompt", "completion"]
        assert out.to_list() == expected

    expected_chat = [
        {"prompt": row["prompt"], "completion": row["chosen"]} for row in chat_rows(toy)
    ]
    chat_layouts = [
        [{"messages": [user(p), assistant(c)]} for p, c, _ in toy],
        [{"prompt": [user(p)], "completion": [assistant(c)]} for p, c, _ in toy],
        [
            {"chosen": [user(p), assistant(c)], "rejected": [user(p), assistant(r)]}
            for p, c, r in toy
        ],
    ]
    for rows in chat_layouts:
        assert normalize_sft(Dataset.from_list(rows), bpe_tokenizer, {}).to_list() == expected_chat


def test_sft_messages_split_at_the_last_assistant_turn(bpe_tokenizer):
    turns = [user("Hi"), assistant("Hello!"), user("Name a film."), assistant("Jaws.")]
    row = normalize_sft(Dataset.from_list([{"messages": turns}]), bpe_tokenizer, {})[0]
    assert row == {
        "prompt": (
            f"<|user|>\nHi{EOS}\n<|assistant|>\nHello!{EOS}\n"
            f"<|user|>\nName a film.{EOS}\n<|assistant|>\n"
        ),
        "completion": f"Jaws.{EOS}",
    }
    no_answer = Dataset.from_list([{"messages": [user("Hi")]}])
    with pytest.raises(UserError, match="row 0: messages need an assistant turn"):
        normalize_sft(no_answer, bpe_tokenizer, {})


def test_sft_text_column_gives_empty_prompts(bpe_tokenizer):
    ds = Dataset.from_list([{"text": "A quiet, lovely film.", "source": "web"}])
    assert normalize_sft(ds, bpe_tokenizer, {}).to_list() == [
        {"prompt": "", "completion": "A quiet, lovely film."}
    ]


def test_sft_missing_columns_lists_the_accepted_layouts(bpe_tokenizer):
    with pytest.raises(UserError, match=r"'sft' has columns \[input\]; expected prompt/completion"):
        normalize_sft(Dataset.from_list([{"input": "x"}]), bpe_tokenizer, {})


# ---------------------------------------------------------------------------- eval prompts
def test_eval_prompts_from_prompt_only_and_preference_rows(bpe_tokenizer, toy, toy_rows):
    prompts = [p for p, _, _ in toy]
    only = normalize_eval_prompts(Dataset.from_dict({"prompt": prompts}), bpe_tokenizer, {})
    assert only.column_names == ["prompt", "reference"]
    assert only.to_list() == [{"prompt": p, "reference": ""} for p in prompts]

    with_ref = Dataset.from_list([{"prompt": "p1", "reference": " r1"}, {"prompt": "p2"}])
    assert normalize_eval_prompts(with_ref, bpe_tokenizer, {}).to_list() == [
        {"prompt": "p1", "reference": " r1"},
        {"prompt": "p2", "reference": ""},  # a missing reference is unknown, not an error
    ]

    from_pref = normalize_eval_prompts(Dataset.from_list(toy_rows), bpe_tokenizer, {})
    assert from_pref.to_list() == [{"prompt": p, "reference": c} for p, c, _ in toy]

    chat = [
        {"chosen": [user(p), assistant(c)], "rejected": [user(p), assistant(r)]} for p, c, r in toy
    ]
    out = normalize_eval_prompts(Dataset.from_list(chat), bpe_tokenizer, {})
    # The prompt matches the preference rows'; the reference drops EOS, as generations do.
    assert out["prompt"] == [row["prompt"] for row in chat_rows(toy)]
    assert out["reference"] == [c.strip() for _, c, _ in toy]


def test_eval_prompts_conversational_prompt_opens_an_assistant_turn(bpe_tokenizer):
    ds = Dataset.from_list([{"prompt": [user("Name a film.")]}])
    row = normalize_eval_prompts(ds, bpe_tokenizer, {})[0]
    assert row == {"prompt": f"<|user|>\nName a film.{EOS}\n<|assistant|>\n", "reference": ""}
