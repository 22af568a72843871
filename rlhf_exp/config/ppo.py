"""Schema of method=ppo (owned by the PPO method; see conf/method/ppo.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_exp.config.schema import TrainSpec


@dataclass
class PPOSpec(TrainSpec):
    name: str = "ppo"
