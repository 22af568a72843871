"""Fixtures for the model tests: one tiny base per session, GPT-2-like dirs without a pad token.

Shared values are fixtures, not imports: `import conftest` would be ambiguous next to
tests/conftest.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import huggingface_hub.constants
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_exp.config.schema import TinySpec
from rlhf_exp.models.tiny import build_tiny_base

SMALL = TinySpec(n_layer=2, n_head=2, n_embd=32, n_positions=64, vocab_size=400)


def make_corpus(n: int, seed: int = 0) -> list[str]:
    """`n` short review-like sentences; varied enough for a few hundred BPE merges."""
    rng = random.Random(seed)
    subjects = ["film", "plot", "acting", "cast", "ending", "soundtrack", "script", "story"]
    verdicts = ["great", "dull", "wonderful", "terrible", "boring", "moving", "funny", "slow"]
    extras = ["", " Would watch again!", " Not for me.", " 10/10.", " Meh...", " Loved it."]
    return [
        f"The {rng.choice(subjects)} was {rng.choice(verdicts)} and the "
        f"{rng.choice(subjects)} felt {rng.choice(verdicts)}.{rng.choice(extras)}"
        for _ in range(n)
    ]


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    return make_corpus(400)


@pytest.fixture(scope="session")
def corpus_maker() -> Callable[..., list[str]]:
    return make_corpus


@pytest.fixture(scope="session")
def small_spec() -> TinySpec:
    """Smaller than the default so builds and forwards stay in milliseconds."""
    return SMALL


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    """A small tiny base shared read-only by the tests; tests that write use their tmp_path."""
    out = tmp_path_factory.mktemp("tiny")
    build_tiny_base(SMALL, corpus, out, seed=0)
    return out


def _save_gpt2_like(out: Path, corpus: list[str], pad_as_eos: bool) -> Path:
    """A checkpoint shaped like hub GPT-2: one special token, pad unset (or pad == eos)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    eos = "<|endoftext|>"
    extra = {"pad_token": eos} if pad_as_eos else {}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=eos, eos_token=eos, unk_token=eos, **extra
    )
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2)
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    GPT2LMHeadModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture
def save_gpt2_like() -> Callable[..., Path]:
    return _save_gpt2_like


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub lookups fail at once instead of retrying a dead network for ~25 s.

    huggingface_hub reads HF_HUB_OFFLINE once, at import, so setting the env var alone does
    nothing in a running process; the module constant is what `is_offline_mode()` consults.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
