"""The tiny base: reloads through Auto* classes, is deterministic, has the expected shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_exp.config.schema import TinySpec
from rlhf_exp.models.tiny import build_tiny_base


def test_reloads_with_auto_classes(tiny_dir: Path, small_spec: TinySpec) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert (tiny_dir / "model.safetensors").is_file()
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    assert tok.bos_token == tok.eos_token == tok.unk_token == "<|endoftext|>"
    assert tok.padding_side == "right" and tok.model_max_length == small_spec.n_positions
    for config in (model.config, model.generation_config):
        assert (config.eos_token_id, config.pad_token_id) == (tok.eos_token_id, tok.pad_token_id)
    assert model.config.vocab_size == len(tok) <= small_spec.vocab_size
    text = "The cast was brilliant! Ünïcödé ✓ too."  # byte-level: no unk, exact round trip
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_marks_the_assistant_turn(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    prompt = [{"role": "user", "content": "Review the film."}]
    chat = [*prompt, {"role": "assistant", "content": "It was great."}]
    full = tok.apply_chat_template(chat, tokenize=False)
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    assert full.startswith(head) and full.endswith("It was great.<|endoftext|>")
    out = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    ids = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert tok.decode(ids) == "It was great.<|endoftext|>"


def test_same_corpus_and_seed_give_identical_builds(
    tmp_path: Path, corpus: list[str], small_spec: TinySpec
) -> None:
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        build_tiny_base(small_spec, corpus, tmp_path / name, seed=seed)
    vocab = {n: json.loads((tmp_path / n / "tokenizer.json").read_text())["model"] for n in "abc"}
    assert vocab["a"] == vocab["b"] == vocab["c"]  # the tokenizer ignores the seed
    weights = {n: load_file(tmp_path / n / "model.safetensors") for n in "abc"}
    assert weights["a"].keys() == weights["b"].keys()
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not torch.equal(
        weights["a"]["transformer.wte.weight"], weights["c"]["transformer.wte.weight"]
    )


def test_forward_shapes_and_reward_head(tiny_dir: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    texts = ["The plot was dull.", "The film was great and the cast felt moving."]
    batch = tok(texts, return_tensors="pt", padding=True)
    lm = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    with torch.no_grad():
        logits = lm(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], len(tok))  # (B, T, V)

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_dir, num_labels=1).eval()
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tok.pad_token_id
    with torch.no_grad():
        scores = rm(**batch).logits  # (B, 1)
        alone = rm(**tok(texts[:1], return_tensors="pt")).logits
    assert scores.shape == (2, 1)
    # The head reads the last non-pad token, so right padding must not change the score.
    torch.testing.assert_close(scores[:1], alone, atol=1e-5, rtol=0)


def test_default_spec_parameter_count(tmp_path: Path, corpus_maker: Callable) -> None:
    spec = TinySpec()
    build_tiny_base(spec, corpus_maker(2000, seed=1), tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    v, d, t, n_layer = model.config.vocab_size, spec.n_embd, spec.n_positions, spec.n_layer
    per_layer = 12 * d * d + 13 * d  # qkv, out proj, 4x MLP (weights + biases), two layernorms
    expected = v * d + t * d + n_layer * per_layer + 2 * d  # lm_head is tied to wte
    assert sum(p.numel() for p in model.parameters()) == expected
    assert 300_000 < expected <= 675_328  # 675,328 at the full vocab of 2048
