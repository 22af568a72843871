"""Pieces every trainer-backed method shares: TRL/transformers arguments from a `TrainSpec`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf_exp.config.schema import TrainSpec
    from rlhf_exp.runner import RunContext


def trainer_args(spec: TrainSpec, ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments for a TRL `*Config`, with CPU-sane values set explicitly.

    TRL defaults `bf16=True` and gradient checkpointing on; both are wrong for small models on
    CPU (checkpointing recomputes activations that fit easily), so they are off unless asked.
    """
    return {
        "output_dir": str(ctx.checkpoint_dir),
        "seed": ctx.run.seed,
        "data_seed": ctx.run.seed,
        "learning_rate": spec.learning_rate,
        "num_train_epochs": spec.num_train_epochs,
        "max_steps": spec.max_steps,
        "per_device_train_batch_size": spec.per_device_train_batch_size,
        "per_device_eval_batch_size": spec.per_device_eval_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "lr_scheduler_type": spec.lr_scheduler_type,
        "warmup_steps": spec.warmup_ratio,  # a float < 1 is a ratio of total steps
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm,
        "logging_steps": spec.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": spec.eval_steps,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "save_total_limit": 1,
        "report_to": "none",  # the run's Tracker adds its own TensorBoard callback
        "bf16": False,
        "fp16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": False,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,  # no accelerator to pin for on CPU; avoids a warning
    }


def eval_subset(dataset: Any, spec: TrainSpec) -> Any:
    """The first `spec.max_eval_samples` rows: evaluation during training stays cheap."""
    return dataset.select(range(min(len(dataset), spec.max_eval_samples)))
