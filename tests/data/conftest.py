"""Fixtures for the data tests: a tiny byte-level BPE tokenizer trained offline, and a toy set.

Shared values are fixtures rather than imports: test modules and conftests in other test
directories share basenames, so `from conftest import ...` could pick up the wrong one.
"""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

_CORPUS = [
    "The film was a delight from start to finish.",
    "I found the plot dull and the pacing painfully slow.",
    "What is the capital of France? Paris is the capital of France.",
    "Write a short review of a movie you liked.",
]

# The five-example toy set (prompt, accepted, rejected). Completions start with a space (TRL's
# convention: prompt + completion is the full text) and differ from their first letter, so the
# implicit layout's shared prefix is exactly the prompt. "días" exercises non-ASCII text.
_TOY = [
    (
        "Write a one-line review of a film you loved:",
        " The performances were warm and the ending made me cry.",
        " I walked out halfway through because nothing happened.",
    ),
    (
        "Summarise the plot of Jaws in one sentence:",
        " A shark terrorises a beach town and three men hunt it down.",
        " It is a movie about the ocean, I think.",
    ),
    ("What is the capital of France?", " Paris is the capital of France.", " London, probably."),
    (
        "Suggest a name for a friendly robot:",
        " Bolt, because it is quick and cheerful.",
        " Unit 7.",
    ),
    ("Translate 'good morning' into Spanish:", " Buenos días.", " Guten Morgen."),
]


@pytest.fixture
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh tokenizer (EOS `<|endoftext|>`) without a chat template; tests may set one."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )


@pytest.fixture
def toy() -> list[tuple[str, str, str]]:
    """The toy set as (prompt, chosen, rejected) triples."""
    return list(_TOY)


@pytest.fixture
def toy_rows(toy) -> list[dict[str, str]]:
    """The toy set in the explicit-prompt layout, i.e. what every layout normalises to."""
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in toy]
