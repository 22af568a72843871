"""Schema of method=dpo (owned by the DPO method; see conf/method/dpo.yaml)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_exp.config.schema import TrainSpec


@dataclass
class DPOSpec(TrainSpec):
    name: str = "dpo"
