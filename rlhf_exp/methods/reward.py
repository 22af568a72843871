"""Bradley-Terry reward model on preference pairs (TRL `RewardTrainer`).

    python run.py method=reward                # starts from the cached SFT policy
    python run.py method=reward lora=default   # LoRA adapters + a trainable scalar head

Initialised from the SFT policy of the same model and data (`upstream.sft`), with a new
scalar head. Pairs are cut by the token budget (rlhf_exp/data/tokens.py: the dialogue loses
its start, never the replies) and pairs left identical are dropped and counted. Reports
pairwise accuracy on held-out pairs (chosen scored above rejected; a tie counts one half)
beside a bag-of-words logistic regression on the same split
(`eval/accuracy_lexical_baseline`).
"""

from __future__ import annotations

import logging
from typing import Any

from trl import RewardConfig, RewardTrainer

from rlhf_exp.config.schema import RewardSpec, RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.data.tokens import TokenBudget, joined, require_rows
from rlhf_exp.errors import UserError
from rlhf_exp.hardware import compute_precision
from rlhf_exp.lexical_baseline import lexical_baseline
from rlhf_exp.methods import register
from rlhf_exp.models import (
    count_parameters,
    load_reward_model,
    load_tokenizer,
    lora_config,
    save_merged,
)
from rlhf_exp.rewards.model_scorer import RewardModelScorer, pairwise_accuracy
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


@register("reward", needs=("sft",))
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    spec: RewardSpec = cfg.method  # type: ignore[assignment]
    init = str(ctx.upstream("sft"))
    tokenizer = load_tokenizer(init, cfg.model)
    model = load_reward_model(init, cfg.model, tokenizer=tokenizer)
    task = ctx.task(tokenizer)
    if task.pref_train is None or len(task.pref_train) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no preference rows to train on")
    train = ctx.tokenize(task.pref_train, "preference", tokenizer, "pref_train")
    test = ctx.tokenize(task.pref_test, "preference", tokenizer, "pref_test")
    knobs = "method.max_length / method.max_completion_length"
    require_rows(train, "pref_train", knobs)
    require_rows(test, "pref_test", knobs)
    pairs = joined(train.dataset)
    held_out = eval_subset(joined(test.dataset), spec)

    args = trl_config(
        RewardConfig,
        spec,
        ctx,
        # chosen and rejected go through the model as one batch
        **micro_batches(pairs, spec, sequences_per_row=2),
        per_device_eval_batch_size=eval_batch_size(held_out, spec, sequences_per_row=2),
        max_length=spec.max_length,  # rows already fit it: TRL's length filter drops nothing
        center_rewards_coefficient=spec.center_rewards_coefficient,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=pairs,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.model, cfg.lora, "SEQ_CLS", model=model),
        callbacks=ctx.tracker.trainer_callbacks(),
    )
    trainable, total = count_parameters(trainer.model)
    log.info("reward: %d of %d parameters trainable", trainable, total)
    # TRL's eval accuracy averages per-batch means; score every held-out pair instead.
    scorer = RewardModelScorer(
        trainer.model,
        tokenizer,
        TokenBudget(spec.max_length, spec.max_completion_length),
        spec.per_device_eval_batch_size,
        spec.eval_batch_tokens,
    )
    with compute_precision(cfg.model.precision):
        before = pairwise_accuracy(scorer, test.dataset)
    result = run_training(trainer, ctx)
    save_merged(trainer.model, tokenizer, ctx.model_dir)  # before evaluating: never lost
    with compute_precision(cfg.model.precision):
        after = pairwise_accuracy(scorer, test.dataset)
    loss = final_eval_metrics(trainer)["eval_loss"]
    # Beside the RM: does it learn more than word counts on the same pairs? Last, because the
    # memory scikit-learn takes stays with the process (70-90 MB; benchmarks/NOTES.md).
    lexical = lexical_baseline(task.pref_train.select(train.kept), task.pref_test.select(test.kept))
    log.info(
        "reward: lexical baseline (bag-of-words logistic regression) held-out accuracy %.3f",
        lexical["accuracy"],
    )
    return {
        "train/loss": result.training_loss,
        "train/pairs": len(train.dataset),
        "eval/accuracy_initial": before["accuracy"],
        "eval/accuracy": after["accuracy"],
        "eval/accuracy_lexical_baseline": lexical["accuracy"],
        "eval/margin": after["margin"],
        "eval/score_ties": after["ties"],
        "eval/loss": loss,
        "eval/pairs": after["pairs"],
        "train/global_step": trainer.state.global_step,
        **throughput(trainer, result),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }
