"""Datasets for every method: the embedded task, local files or the hub, normalised to TRL's
explicit-prompt string format and split (`load_task`), plus the normalisers themselves."""

from rlhf_exp.data.formats import (
    ensure_chat_template,
    normalize_eval_prompts,
    normalize_preference,
    normalize_sft,
)
from rlhf_exp.data.loading import TaskData, load_task

__all__ = [
    "TaskData",
    "ensure_chat_template",
    "load_task",
    "normalize_eval_prompts",
    "normalize_preference",
    "normalize_sft",
]
