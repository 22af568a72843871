"""Direct Preference Optimization on preference pairs (TRL `DPOTrainer`), from the SFT policy.

    python run.py method=dpo                         # tiny model, embedded sentiment task
    python run.py method=dpo lora=default            # LoRA; reference = adapters disabled
    python run.py method=dpo method.loss_type=ipo method.beta=0.5

The loss is TRL's (Rafailov et al. 2023, Eq. 7, and the variants in `config/dpo.py`). The
reference is the starting SFT policy: with LoRA the same weights with the adapters switched
off (no second copy); without LoRA a frozen copy, or none at all when its log-probs are
precomputed before training (the default). At the end `final_evaluation` compares the policy
with the SFT policy on the held-out prompts (`eval/*` next to `eval/sft/*`, `eval/kl`, ...).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from trl import DPOConfig, DPOTrainer

from rlhf_exp import signals
from rlhf_exp.config.dpo import DPOSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.data.tokens import require_rows
from rlhf_exp.errors import UserError
from rlhf_exp.evaluation import final_evaluation
from rlhf_exp.methods import evaluation_needs, register
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
    reference_policy,
    refuse_multiprocess_precompute,
    rows_for_steps,
    run_training,
    throughput,
    trl_config,
)

log = logging.getLogger(__name__)


def dpo_config(spec: DPOSpec, ctx: RunContext, train: Any, held_out: Any) -> DPOConfig:
    """TRL config: the shared CPU-sane trainer arguments plus DPO's own knobs, batches sized
    for the `train` and `held_out` pairs."""
    return trl_config(
        DPOConfig,
        spec,
        ctx,
        # chosen and rejected go through the model as one batch
        **micro_batches(train, spec, sequences_per_row=2),
        per_device_eval_batch_size=eval_batch_size(held_out, spec, sequences_per_row=2),
        beta=spec.beta,
        loss_type=[spec.loss_type],
        label_smoothing=spec.label_smoothing,
        max_length=spec.max_length,
        precompute_ref_log_probs=spec.precompute_ref_log_probs,
        precompute_ref_batch_size=spec.precompute_ref_batch_size,
        pad_to_multiple_of=None,  # dynamic padding: each batch to its own longest pair
    )


class TokenizedDPOTrainer(DPOTrainer):
    """`DPOTrainer` that takes pairs already tokenised and cut by the project's token budget.

    TRL's own preparation re-tokenises text and, with `keep_start`, cuts the joined pair
    from the right, which on long dialogues removes the replies; rows that carry
    prompt_ids/chosen_ids/rejected_ids (its collator's input) are used as they are.
    """

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, name)


def build_trainer(
    cfg: RunConfig, ctx: RunContext, init: str, model: Any, tokenizer: Any, train: Any, test: Any
) -> DPOTrainer:
    """A `DPOTrainer` for `model` (the policy loaded from `init`) on tokenised pairs.

    Reference: with LoRA, none is built (TRL disables the adapters for the reference pass);
    without LoRA and without precomputation, a frozen copy loaded from `init`; with
    precomputation TRL scores every pair with the untouched policy before the first step.
    """
    spec: DPOSpec = cfg.method  # type: ignore[assignment]
    peft_config = lora_config(cfg.model, cfg.lora, "CAUSAL_LM", model=model)
    ref_model = None
    if peft_config is None and not spec.precompute_ref_log_probs:
        # Loaded by us, not by TRL from `config._name_or_path`, so it gets the same dtype,
        # vocab and pad id as the policy.
        ref_model = load_causal_lm(init, cfg.model, tokenizer=tokenizer).eval()
        ref_model.requires_grad_(False)
    held_out = eval_subset(test, spec)
    return TokenizedDPOTrainer(
        model=model,
        ref_model=ref_model,
        args=dpo_config(spec, ctx, train, held_out),
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=ctx.tracker.trainer_callbacks(),
    )


@register("dpo", needs=evaluation_needs("sft"))
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    spec: DPOSpec = cfg.method  # type: ignore[assignment]
    refuse_multiprocess_precompute(spec)
    init = str(ctx.upstream("sft"))
    tokenizer = load_tokenizer(init, cfg.model)
    model = load_causal_lm(init, cfg.model, tokenizer=tokenizer)
    task = ctx.task(tokenizer)
    if task.pref_train is None or len(task.pref_train) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no preference rows to train on")
    if task.pref_test is None or len(task.pref_test) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no held-out preference rows")

    started = time.perf_counter()
    train = ctx.tokenize(task.pref_train, "preference", tokenizer, "pref_train")
    test = ctx.tokenize(task.pref_test, "preference", tokenizer, "pref_test")
    knobs = "method.max_length / method.max_completion_length"
    require_rows(train, "pref_train", knobs)
    require_rows(test, "pref_test", knobs)
    train_rows = train.dataset
    if spec.precompute_ref_log_probs:  # score only the pairs this run will train on
        train_rows = rows_for_steps(train_rows, spec, cfg.seed)
    # scoring every pair with the reference takes minutes on real data: a signal stops it
    with signals.phase("precompute" if spec.precompute_ref_log_probs else "setup"):
        trainer = build_trainer(cfg, ctx, init, model, tokenizer, train_rows, test.dataset)
    setup_s = time.perf_counter() - started  # tokenising, and scoring pairs with the reference
    trainable, total = count_parameters(trainer.model)
    log.info("dpo: %d of %d parameters trainable", trainable, total)
    result = run_training(trainer, ctx)
    save_merged(trainer.model, tokenizer, ctx.model_dir)  # before evaluating: never lost
    pair_metrics = final_eval_metrics(trainer)
    eval_metrics = final_evaluation(
        ctx, trainer.model, tokenizer, task, reference=reference_policy(trainer, cfg, init)
    )

    metrics = {
        "train/loss": result.training_loss,
        "train/pairs": len(train_rows),
        "eval/loss": pair_metrics["eval_loss"],
        "eval/rewards_accuracies": pair_metrics["eval_rewards/accuracies"],
        "eval/rewards_margins": pair_metrics["eval_rewards/margins"],
        "eval/rewards_chosen": pair_metrics["eval_rewards/chosen"],
        "eval/rewards_rejected": pair_metrics["eval_rewards/rejected"],
        "eval/pairs": len(trainer.eval_dataset),
        **eval_metrics,
    }
    return {
        **metrics,
        "train/global_step": trainer.state.global_step,
        **throughput(trainer, result),
        "time/trainer_setup_s": round(setup_s, 2),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }
