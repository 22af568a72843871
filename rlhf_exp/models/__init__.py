"""Models: the tiny GPT-2 builder, loading from hub ids or local dirs, LoRA wrapping, saving."""

from rlhf_exp.models.loading import (
    apply_lora,
    count_parameters,
    enable_gradient_checkpointing,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    lora_config,
)
from rlhf_exp.models.saving import save_merged
from rlhf_exp.models.tiny import CHAT_TEMPLATE, build_tiny_base

__all__ = [
    "CHAT_TEMPLATE",
    "apply_lora",
    "build_tiny_base",
    "count_parameters",
    "enable_gradient_checkpointing",
    "load_causal_lm",
    "load_reward_model",
    "load_tokenizer",
    "lora_config",
    "save_merged",
]
