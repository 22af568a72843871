"""Supervised fine-tuning of the policy on the dataset's demonstrations (TRL `SFTTrainer`).

    python run.py method=sft                 # tiny model, embedded sentiment task
    python run.py method=sft lora=default    # LoRA adapters, merged into the saved policy

The loss covers completion tokens only (prompt tokens are masked), and the saved policy is
a plain model dir (LoRA merged) that later stages load with `from_pretrained`. Rows are cut
by the token budget (rlhf_exp/data/tokens.py): a long prompt loses its start, never the
completion. With preference data only, SFT trains on prompt + chosen.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import disable_dropout_in_model

from rlhf_exp.config.schema import RunConfig, SFTSpec
from rlhf_exp.context import RunContext
from rlhf_exp.errors import UserError
from rlhf_exp.methods import register
from rlhf_exp.models import (
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    save_merged,
)
from rlhf_exp.training import (
    eval_batch_size,
    eval_subset,
    final_eval_metrics,
    micro_batches,
    run_training,
    throughput,
    trl_config,
)

log = logging.getLogger(__name__)


@register("sft")
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    spec: SFTSpec = cfg.method  # type: ignore[assignment]
    base = ctx.base_model()
    tokenizer = load_tokenizer(base, cfg.model)
    model = load_causal_lm(base, cfg.model, tokenizer=tokenizer)
    if spec.disable_dropout:  # before LoRA wraps it: the adapters keep lora.dropout
        disable_dropout_in_model(model)
    task = ctx.task(tokenizer)
    if task.sft_train is None or len(task.sft_train) == 0:
        # data/checks.py refuses this before any stage trains when no split gives sft rows
        raise UserError(
            f"dataset {cfg.dataset.name!r} has no sft rows to fine-tune on; give it an sft "
            "split (dataset.data_files.sft) or preference pairs (dataset.data_files.preference)"
        )
    if task.sft_eval is None or len(task.sft_eval) == 0:
        raise UserError(
            f"dataset {cfg.dataset.name!r} has no held-out sft rows (give an sft_eval split, "
            "or more than one sft row)"
        )
    train = ctx.tokenize(task.sft_train, "sft", tokenizer, "sft_train").dataset
    held_out = eval_subset(ctx.tokenize(task.sft_eval, "sft", tokenizer, "sft_eval").dataset, spec)

    args = trl_config(
        SFTConfig,
        spec,
        ctx,
        **micro_batches(train, spec, sequences_per_row=1),
        per_device_eval_batch_size=eval_batch_size(held_out, spec, sequences_per_row=1),
        max_length=spec.max_length,  # rows already fit it (input_ids + completion_mask)
        completion_only_loss=spec.completion_only_loss,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.model, cfg.lora, "CAUSAL_LM", model=model),
        callbacks=ctx.tracker.trainer_callbacks(),
    )
    trainable, total = count_parameters(trainer.model)
    log.info("sft: %d of %d parameters trainable", trainable, total)
    # the starting loss is measured inside train(), after the model is prepared (FSDP2
    # cannot prepare a model for an evaluation alone); a resumed run has it in its history
    result = run_training(trainer, ctx, eval_on_start=True)
    save_merged(trainer.model, tokenizer, ctx.model_dir)  # before evaluating: never lost
    loss_before = _initial_eval_loss(trainer)
    loss_after = final_eval_metrics(trainer)["eval_loss"]
    return {
        "train/loss": result.training_loss,
        "train/rows": len(train),
        "eval/loss_initial": loss_before,
        "eval/loss": loss_after,
        "train/global_step": trainer.state.global_step,
        **throughput(trainer, result),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }


def _initial_eval_loss(trainer: Any) -> float:
    """The held-out loss before the first step (logged at step 0 by `eval_on_start`)."""
    for entry in trainer.state.log_history:
        if entry.get("step") == 0 and "eval_loss" in entry:
            return float(entry["eval_loss"])
    raise RuntimeError("no step-0 evaluation in the trainer's log history")
