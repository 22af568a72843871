"""A LoRA model saved for `from_pretrained`: the adapters merged bit for bit as peft's own
`merge_and_unload` does, without copying the model, and the trained model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
)

from rlhf_exp.models.loading import merged_state_dict, save_merged


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
