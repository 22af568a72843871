"""Schema of method=online_dpo: TRL 1.16's experimental `OnlineDPOTrainer` (Guo et al. 2024,
"Direct Language Model Alignment from Online AI Feedback"); defaults and the reason beside
each one in conf/method/online_dpo.yaml.

Each optimiser step samples two completions per prompt from the current policy, a reward (the
learned reward model, the gold reward, a registered reward or package.module:function) names
the better one, and the DPO loss is taken on that fresh pair against the SFT reference. Field
names follow TRL's `OnlineDPOConfig`; `method.trainer_kwargs` reach any other option of it.
Inherited `TrainSpec` fields, as this method reads them:
  per_device_train_batch_size  prompts per micro-batch (2 completions each)
  max_completion_length        tokens sampled per completion (TRL's max_new_tokens)
  max_length                   prompt + completion tokens: prompts keep their last
                               max_length - max_completion_length tokens (cut from the left)
  eval_steps, max_eval_samples held-out gold (and RM) reward every eval_steps, as PPO's
  per_device_eval_batch_size, eval_batch_tokens   unused (sampling uses eval.batch_size)
  train_batch_tokens           unused (micro-batches: per_device_train_batch_size)
This module imports no torch (config is validated before anything loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.online_rl import refuse_sequence_knobs
from rlhf_exp.config.schema import TrainSpec, _f


@dataclass
class OnlineDPOSpec(TrainSpec):
    TRL_CONFIG: ClassVar[str | None] = "trl.experimental.online_dpo:OnlineDPOConfig"
    # DPO's beta on the sampled pairs: the frontier's KL knob, as offline DPO's.
    KL_KNOB: ClassVar[str | None] = "beta"

    name: str = "online_dpo"
    learning_rate: float = _f(1e-4, gt=0, le=1)
    lr_scheduler_type: str = _f(
        "linear", choices=["linear", "cosine", "constant", "constant_with_warmup"]
    )
    warmup_ratio: float = _f(0.0, ge=0, lt=1)
    max_steps: int = _f(60, ge=-1)
    per_device_train_batch_size: int = _f(16, ge=1)
    max_completion_length: int = _f(24, ge=1)
    logging_steps: int = _f(5, ge=1)
    eval_steps: int = _f(20, ge=1)
    save_steps: int = _f(20, ge=1)
    max_eval_samples: int = _f(128, ge=1)
    # "model" (learned RM), "gold" (dataset.gold_reward), a registered reward name, or
    # package.module:function (rewards.resolve_reward), as PPO's and RLOO's
    reward: str = "model"
    beta: float = _f(0.1, gt=0)
    loss_type: str = _f("sigmoid", choices=["sigmoid", "ipo"])
    temperature: float = _f(1.0, gt=0)
    # Subtracted from the reward of a completion that never reaches EOS; null: none.
    missing_eos_penalty: float | None = _f(None, ge=0)
    adam_epsilon: float = _f(1e-5, gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        refuse_sequence_knobs(self)
