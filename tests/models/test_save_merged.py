"""A LoRA model saved for `from_pretrained`: the adapters merged bit for bit as peft's own
`merge_and_unload` does, one weight at a time (never a second copy of the model), the trained
model left as it was, and an interrupted save leaving the previous model whole."""

from __future__ import annotations

import copy
import json
import logging
import weakref

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from rlhf_exp.models import saving
from rlhf_exp.models.saving import merged_state_dict, save_merged


@pytest.mark.parametrize(
    ("cls", "auto", "task"),
    [
        (GPT2ForSequenceClassification, AutoModelForSequenceClassification, "SEQ_CLS"),
        (GPT2LMHeadModel, AutoModelForCausalLM, "CAUSAL_LM"),
    ],
)
def test_merged_weights_equal_peft_merge_and_reload(tiny_lm, tmp_path, cls, auto, task):
    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer), num_labels=1,
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type=task)  # fmt: skip
    model = get_peft_model(cls(config), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "score" in name:
                param.normal_()  # a trained adapter and head: the merge must show
    before = {k: v.clone() for k, v in model.state_dict().items()}
    expected = copy.deepcopy(model).merge_and_unload().state_dict()

    merged = merged_state_dict(model)
    assert set(merged) == set(expected)
    assert all(torch.equal(merged[k], expected[k]) for k in expected)
    base = model.get_base_model().state_dict()
    assert all(not torch.equal(merged[k], base[k.replace("c_attn.", "c_attn.base_layer.")])
               for k in merged if k.endswith("c_attn.weight"))  # fmt: skip

    save_merged(model, tokenizer, tmp_path / "model")
    reloaded = auto.from_pretrained(tmp_path / "model").state_dict()
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)
    after = model.state_dict()  # the trained model keeps its adapters, unchanged
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)


def _lora_lm(tokenizer, targets=("c_attn", "c_proj", "c_fc"), seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer),
                        pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), fan_in_fan_out=True,
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(GPT2LMHeadModel(config), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    return model


def test_sharded_save_merges_one_weight_at_a_time(tiny_lm, tmp_path, monkeypatch):
    """Every weight in a shard of its own: the reloaded model is peft's merge, bit for bit, and
    no merged weight is alive when the next one is built (no second copy of the model)."""
    _, tokenizer = tiny_lm
    model = _lora_lm(tokenizer)
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    monkeypatch.setattr(saving, "SAVE_SHARD", "1KB")
    built: list[weakref.ref] = []
    alive_at_build: list[int] = []
    real_merge_of = saving._merge_of

    def counted(layer, module, adapter):
        merge = real_merge_of(layer, module, adapter)

        def build():
            alive_at_build.append(sum(ref() is not None for ref in built))
            merged = merge()
            built.append(weakref.ref(merged))
            return merged

        return build

    monkeypatch.setattr(saving, "_merge_of", counted)
    save_merged(model, tokenizer, tmp_path / "model")

    assert len(alive_at_build) == 8  # c_attn, attn.c_proj, c_fc, mlp.c_proj in 2 layers
    assert alive_at_build == [0] * len(alive_at_build)
    index = json.loads((tmp_path / "model" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > len(alive_at_build)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert set(reloaded) == set(expected)
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no building dir left


def test_interrupted_save_keeps_the_previous_model(tiny_lm, tmp_path, monkeypatch):
    _, tokenizer = tiny_lm
    first = _lora_lm(tokenizer, seed=0)
    save_merged(first, tokenizer, tmp_path / "model")
    saved = {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()}

    second = _lora_lm(tokenizer, seed=1)
    monkeypatch.setattr(saving, "SAVE_SHARD", "1KB")
    real_merge_of = saving._merge_of
    calls = []

    def dies_on_the_second_merge(layer, module, adapter):
        merge = real_merge_of(layer, module, adapter)

        def build():
            calls.append(1)
            if len(calls) == 2:  # the first merged weight is already written over its shard
                raise OSError("No space left on device")
            return merge()

        return build

    monkeypatch.setattr(saving, "_merge_of", dies_on_the_second_merge)
    with pytest.raises(OSError, match="No space left"):
        save_merged(second, tokenizer, tmp_path / "model")
    assert {p.name: p.read_bytes() for p in (tmp_path / "model").iterdir()} == saved

    monkeypatch.setattr(saving, "_merge_of", real_merge_of)
    save_merged(second, tokenizer, tmp_path / "model")
    expected = copy.deepcopy(second).merge_and_unload().state_dict()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model").state_dict()
    assert all(torch.equal(reloaded[k], expected[k]) for k in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_weight_saved_under_another_name_is_merged_in_memory(tiny_lm, tmp_path, caplog):
    """GPT-2 ties its head to the embeddings, so transformers writes no `lm_head.weight`; an
    adapter on the head is then merged in memory (as before shard-by-shard saving), with a
    warning that says so, and nothing is lost."""
    _, tokenizer = tiny_lm
    model = _lora_lm(tokenizer, targets=("c_attn", "lm_head"))
    expected = merged_state_dict(model)
    with caplog.at_level(logging.WARNING, logger="rlhf_exp.models.saving"):
        save_merged(model, tokenizer, tmp_path / "model")
    assert "checkpoint does not hold 'lm_head.weight'" in caplog.text
    with safe_open(tmp_path / "model" / "model.safetensors", framework="pt") as saved:
        assert set(saved.keys()) == set(expected)
        assert all(torch.equal(saved.get_tensor(k), expected[k]) for k in expected)
    assert not torch.equal(expected["lm_head.weight"], expected["transformer.wte.weight"])


def test_a_merged_weight_of_another_dtype_is_not_written_over_the_base_one(tiny_lm, tmp_path):
    """The merged bytes go where the base weight's are only when they fit exactly; otherwise
    the key comes back and the shard is left for the caller to write another way."""
    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    plain = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer)))
    plain.save_pretrained(tmp_path)
    key = "transformer.h.0.attn.c_attn.weight"
    before = (tmp_path / "model.safetensors").read_bytes()
    for wrong in (torch.zeros(32, 96, dtype=torch.bfloat16), torch.zeros(96, 32)):
        assert saving.merge_into_shards(tmp_path, {key: lambda w=wrong: w}) == [key]
        assert (tmp_path / "model.safetensors").read_bytes() == before
    assert saving.merge_into_shards(tmp_path, {key: lambda: torch.ones(32, 96)}) == []
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path).state_dict()
    assert torch.equal(reloaded[key], torch.ones(32, 96))
    assert all(torch.equal(reloaded[k], v) for k, v in plain.state_dict().items() if k != key)


def test_a_bf16_base_is_merged_in_place_in_bf16(tiny_lm, tmp_path, caplog):
    """peft keeps the adapters of a bf16 model in fp32; the merged weight is written in the base
    weight's dtype, as peft's own merge leaves it, so it fits over the base weight's bytes."""
    _, tokenizer = tiny_lm
    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=len(tokenizer)))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True,
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(base.to(torch.bfloat16), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                assert param.dtype == torch.float32
                param.normal_()
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    with caplog.at_level(logging.WARNING, logger="rlhf_exp.models.saving"):
        save_merged(model, tokenizer, tmp_path / "model")
    # no fallback to merging in memory (transformers' own config warnings may reach caplog
    # too, depending on what ran before in this process)
    assert [r.message for r in caplog.records if r.name == "rlhf_exp.models.saving"] == []
    with safe_open(tmp_path / "model" / "model.safetensors", framework="pt") as saved:
        key = "transformer.h.0.attn.c_attn.weight"
        assert saved.get_tensor(key).dtype == torch.bfloat16
        names = saved.keys()  # a safe_open handle is not iterable
        assert all(torch.equal(saved.get_tensor(k), expected[k]) for k in names)
