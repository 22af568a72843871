"""Schemas of method=rloo and method=grpo: TRL 1.16's RLOOTrainer and GRPOTrainer (see
conf/method/rloo.yaml and grpo.yaml for the defaults and the reason beside each one).

    python run.py --cfg job method=grpo method.num_generations=8   # composed, validated config

Field names follow TRL's `RLOOConfig` / `GRPOConfig`; the fields a method adds to the shared
`OnlineRLSpec` are passed to its TRL config under the same name, and `method.trainer_kwargs`
reach any other option of it. Inherited `TrainSpec` fields, as these methods read them:
  max_steps                    optimiser steps (TRL's global_step); each generation of
                               per_device_train_batch_size x steps_per_generation completions
                               feeds steps_per_generation x num_iterations /
                               gradient_accumulation_steps of them; -1: num_train_epochs passes
  per_device_train_batch_size  completions per forward/backward
  gradient_accumulation_steps  micro-batches per optimiser step
  max_completion_length        tokens sampled per completion (PPO's response_length)
  max_length                   prompt + completion tokens: prompts keep their last
                               max_length - max_completion_length tokens (cut from the left)
  eval_steps, max_eval_samples held-out gold (and RM) reward every eval_steps on that many
                               prompts, as PPO's periodic evaluation
  per_device_eval_batch_size   unused (held-out sampling and RM scoring use eval.batch_size)
  eval_batch_tokens            unused, as per_device_eval_batch_size
  train_batch_tokens           unused (micro-batches: per_device_train_batch_size)
This module imports no torch (config is validated before anything loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.schema import BATCH, MAX_BATCH, TrainSpec, _f
from rlhf_exp.errors import ConfigError

# GRPO loss aggregations that need no further knobs (TRL 1.16 also has cispo, sapo, luspo and
# vespo, each with knobs of its own).
GRPO_LOSS_TYPES = (
    "dapo",  # token losses / active tokens of the accumulated batch (DAPO; TRL's default)
    "grpo",  # per-sequence token mean, then batch mean (Shao et al. 2024; length-biased)
    "dr_grpo",  # token losses / (batch x max_completion_length) (Dr. GRPO, Liu et al. 2025)
    "bnpo",  # token losses / active tokens of the local micro-batch
)


def refuse_sequence_knobs(spec: TrainSpec) -> None:
    """Online methods train on prompts they sample from: no lengths to group by, and TRL's
    generation loop is not compiled; one line if either knob is set."""
    for knob in ("group_by_length", "torch_compile"):
        if getattr(spec, knob):
            raise ConfigError(f"method.{knob}", True, "only sft, reward and dpo take it; set false")


@dataclass
class OnlineRLSpec(TrainSpec):
    """Knobs RLOO and GRPO share: sampling groups, the KL coefficient, the clipped update."""

    # The x-axis of a reward/KL frontier: beta scales the KL to the reference in both (RLOO: a
    # sequence-level k1 penalty in the reward; GRPO: a per-token k3 term in the loss).
    KL_KNOB: ClassVar[str | None] = "beta"

    name: str = ""  # a shared base, not a method (see schema._method_specs)
    learning_rate: float = _f(1e-4, gt=0, le=1)
    lr_scheduler_type: str = _f(
        "linear", choices=["linear", "cosine", "constant", "constant_with_warmup"]
    )
    warmup_ratio: float = _f(0.0, ge=0, lt=1)
    max_steps: int = _f(240, ge=-1)
    max_completion_length: int = _f(24, ge=1)
    logging_steps: int = _f(8, ge=1)  # once a generation
    eval_steps: int = _f(80, ge=1)  # every 10 generations, as PPO's every 10 iterations
    save_steps: int = _f(80, ge=1)
    max_eval_samples: int = _f(128, ge=1)
    # reward: "model" (learned RM), "gold" (dataset.gold_reward), a registered reward name, or
    # package.module:function (rewards.resolve_reward)
    reward: str = "model"
    # completions per prompt: the group of the baseline
    num_generations: int = _f(4, ge=2, le=MAX_BATCH, why_high=BATCH)
    steps_per_generation: int = _f(2, ge=1)  # micro-batches each generation is cut into
    num_iterations: int = _f(4, ge=1)  # passes over each generation (PPO's ppo_epochs)
    beta: float = _f(0.05, ge=0)
    epsilon: float = _f(0.2, gt=0)  # clip range of the probability ratio
    temperature: float = _f(1.0, gt=0)
    mask_truncated_completions: bool = False  # completions without EOS add no loss
    adam_epsilon: float = _f(1e-5, gt=0)

    def __post_init__(self) -> None:
        super().__post_init__()
        generation = self.per_device_train_batch_size * self.steps_per_generation
        if generation % self.num_generations:
            raise ConfigError(
                "method.num_generations",
                self.num_generations,
                "must divide per_device_train_batch_size x steps_per_generation = "
                f"{generation} (a generation holds whole groups of completions per prompt)",
            )
        if self.steps_per_generation % self.gradient_accumulation_steps:
            raise ConfigError(
                "method.steps_per_generation",
                self.steps_per_generation,
                f"must be a multiple of gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps} (a generation feeds whole optimiser steps)",
            )
        refuse_sequence_knobs(self)


@dataclass
class RLOOSpec(OnlineRLSpec):
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024): each completion's baseline is the mean
    reward of the other completions of its prompt."""

    TRL_CONFIG: ClassVar[str | None] = "trl:RLOOConfig"  # what method.trainer_kwargs feed

    name: str = "rloo"
    # Whiten the advantages over the batch (TRL's default: off, as in the paper).
    normalize_advantages: bool = False


@dataclass
class GRPOSpec(OnlineRLSpec):
    """Group Relative Policy Optimization (Shao et al. 2024): advantages are rewards minus
    their group's mean, scaled by the group's standard deviation (`scale_rewards`)."""

    TRL_CONFIG: ClassVar[str | None] = "trl:GRPOConfig"  # what method.trainer_kwargs feed

    name: str = "grpo"
    loss_type: str = _f("dapo", choices=list(GRPO_LOSS_TYPES))
    # Divide advantages by the std of the group (GRPO), of the whole batch, or not at all
    # (Dr. GRPO: scaling by the group's std biases towards easy and hard prompts).
    scale_rewards: str = _f("group", choices=["group", "batch", "none"])
