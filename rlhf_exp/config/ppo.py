"""Schema of method=ppo (owned by the PPO method; see conf/method/ppo.yaml for the defaults
and the reason beside each one).

Fields inherited from `TrainSpec` keep their meaning, with PPO's reading of them:
  max_steps                    PPO iterations (rollout + update); -1: `num_train_epochs` passes
                               over the training prompts decide
  per_device_train_batch_size  micro-batch of one forward/backward in the update, at most
  gradient_accumulation_steps  micro-batches per optimiser step (minibatch = their product)
  per_device_eval_batch_size   batch of reward-model scoring and evaluation sampling
  eval_batch_tokens            unused (reward-model scoring batches hold <= 4,096 tokens)
  train_batch_tokens           padded tokens per update micro-batch, at most: with long prompts
                               the minibatch is split into more, smaller micro-batches
  max_length                   prompt + response tokens; prompts keep their last
                               max_length - response_length tokens (cut from the left)
  max_completion_length        unused: response_length caps what PPO samples
  lr_scheduler_type, warmup_ratio   over all optimiser steps of the run
  logging_steps                progress-bar/log-line interval (TensorBoard gets every step)
  eval_steps, max_eval_samples held-out gold/RM reward every eval_steps on that many prompts
  save_steps                   checkpoint interval (and always at the end)
This module imports no torch (config is validated before anything loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.schema import (
    BATCH,
    MAX_BATCH,
    MAX_TOKENS,
    TOKENS,
    TrainSpec,
    _f,
    check_max_steps,
)
from rlhf_exp.errors import ConfigError


@dataclass
class PPOSpec(TrainSpec):
    KL_KNOB: ClassVar[str | None] = "kl_coef"  # the x-axis of a reward/KL frontier

    name: str = "ppo"
    learning_rate: float = _f(1e-4, gt=0, le=1)
    eval_steps: int = _f(10, ge=1)
    save_steps: int = _f(10, ge=1)
    max_eval_samples: int = _f(128, ge=1)
    lr_scheduler_type: str = _f(
        "linear", choices=["linear", "cosine", "constant", "constant_with_warmup"]
    )
    warmup_ratio: float = _f(0.0, ge=0, lt=1)
    max_steps: int = _f(30, ge=-1)
    per_device_train_batch_size: int = _f(32, ge=1)
    # rollout
    # prompts per rollout per process
    rollout_batch_size: int = _f(64, ge=1, le=MAX_BATCH, why_high=BATCH)
    # max new tokens sampled per prompt
    response_length: int = _f(24, ge=1, le=MAX_TOKENS, why_high=TOKENS)
    temperature: float = _f(1.0, gt=0)
    missing_eos_penalty: float | None = _f(None, ge=0)  # subtracted from the score
    # reward: "model" (learned RM), "gold" (dataset.gold_reward), or a registered reward name
    reward: str = "model"
    reward_clip: float | None = _f(None, gt=0)
    whiten_rewards: bool = False
    # KL penalty
    kl_coef: float = _f(0.05, ge=0)
    kl_estimator: str = _f("k1", choices=["k1", "k3"])
    adaptive_kl: bool = False
    kl_target: float = _f(6.0, gt=0)
    kl_horizon: int = _f(10000, ge=1)
    # PPO update
    ppo_epochs: int = _f(4, ge=1)
    gamma: float = _f(1.0, ge=0, le=1)
    lam: float = _f(0.95, ge=0, le=1)
    cliprange: float = _f(0.2, gt=0)
    cliprange_value: float = _f(0.2, gt=0)
    vf_coef: float = _f(0.1, ge=0)
    whiten_advantages: bool = True
    adam_eps: float = _f(1e-5, gt=0)
    # critic: a separate value model ("model") or a linear head on the policy trunk
    critic: str = _f("model", choices=["model", "value_head"])
    # where a separate critic starts: "auto" = the reward model when method.reward=model,
    # else the SFT policy (so reward-function runs never train a reward model)
    critic_init: str = _f("auto", choices=["auto", "reward", "sft"])
    # checkpoints: keep the newest N (resume with the top-level resume_from)
    save_total_limit: int = _f(2, ge=1)

    def __post_init__(self) -> None:
        # No TrainSpec check of max_completion_length: response_length is PPO's completion cap.
        check_max_steps(self)
        minibatch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if self.rollout_batch_size % minibatch:
            raise ConfigError(
                "method.rollout_batch_size",
                self.rollout_batch_size,
                "must be a multiple of per_device_train_batch_size x gradient_accumulation_steps"
                f" = {minibatch}",
            )
        if self.response_length >= self.max_length:
            raise ConfigError(
                "method.response_length",
                self.response_length,
                f"must be < method.max_length={self.max_length} (room for the prompt)",
            )
        for knob in ("group_by_length", "torch_compile"):
            if getattr(self, knob):
                raise ConfigError(
                    f"method.{knob}", True, "only trainer-backed methods take it (sft, reward, dpo)"
                )
        if self.critic == "value_head" and self.critic_init != "auto":
            raise ConfigError(
                "method.critic_init",
                self.critic_init,
                "only 'auto' with critic=value_head (the head starts at zero on the policy)",
            )
