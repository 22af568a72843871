"""Bradley-Terry reward model on preference pairs (TRL `RewardTrainer`).

    python run.py method=reward                # starts from the cached SFT policy
    python run.py method=reward lora=default   # LoRA adapters + a trainable scalar head

Initialised from the SFT policy of the same model and data (`upstream.sft`), with a new
scalar head. Reports pairwise accuracy on held-out pairs: the fraction where the reward of
`chosen` exceeds that of `rejected`.
"""

from __future__ import annotations

import logging
from typing import Any

from trl import RewardConfig, RewardTrainer

from rlhf_exp.config.schema import RewardSpec, RunConfig
from rlhf_exp.errors import UserError
from rlhf_exp.methods import register
from rlhf_exp.models import (
    count_parameters,
    load_reward_model,
    load_tokenizer,
    lora_config,
    save_merged,
)
from rlhf_exp.rewards.model_scorer import RewardModelScorer, pairwise_accuracy
from rlhf_exp.runner import RunContext
from rlhf_exp.training import eval_subset, run_training, throughput, trainer_args

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

    args = RewardConfig(
        **trainer_args(spec, ctx),
        max_length=spec.max_length,
        center_rewards_coefficient=spec.center_rewards_coefficient,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=task.pref_train,
        eval_dataset=eval_subset(task.pref_test, spec),
        processing_class=tokenizer,
        peft_config=lora_config(cfg.model, cfg.lora, "SEQ_CLS", model=model),
        callbacks=ctx.tracker.trainer_callbacks(),
    )
    trainable, total = count_parameters(trainer.model)
    log.info("reward: %d of %d parameters trainable", trainable, total)
    # TRL's eval accuracy averages per-batch means; score every held-out pair instead.
    scorer = RewardModelScorer(
        trainer.model, tokenizer, spec.max_length, spec.per_device_eval_batch_size
    )
    before = pairwise_accuracy(scorer, task.pref_test)
    result = run_training(trainer, ctx)
    after = pairwise_accuracy(scorer, task.pref_test)
    loss = trainer.evaluate()["eval_loss"]
    save_merged(trainer.model, tokenizer, ctx.model_dir)
    return {
        "train/loss": result.training_loss,
        "eval/accuracy_initial": before["accuracy"],
        "eval/accuracy": after["accuracy"],
        "eval/margin": after["margin"],
        "eval/loss": loss,
        "eval/pairs": after["pairs"],
        "train/global_step": trainer.state.global_step,
        **throughput(trainer, result),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }
