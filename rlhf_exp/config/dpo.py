"""Schema of method=dpo (TRL `DPOConfig` knobs we expose; see conf/method/dpo.yaml).

    python run.py --cfg job method=dpo method.loss_type=ipo   # the composed, validated config

Field names follow TRL's `DPOConfig`. Pairs reach TRL already tokenised and cut by the
project's one rule (`max_length`, `max_completion_length`; rlhf_exp/data/tokens.py): the
prompt loses its start, each reply keeps its own budget, so nothing is dropped for length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.schema import BATCH, MAX_BATCH, TrainSpec, _f
from rlhf_exp.errors import ConfigError

# TRL 1.16's loss types for paired preferences. Left out: "sft" (plain NLL on chosen, not a
# preference loss on its own) and "aot_unpaired" (sorts chosen and rejected independently,
# discarding the pairing this data has).
LOSS_TYPES = (
    "sigmoid",  # DPO, Rafailov et al. 2023, Eq. 7
    "hinge",  # SLiC, Zhao et al. 2023
    "ipo",  # IPO, Azar et al. 2023, Eq. 17 (beta is tau; length-normalised by TRL)
    "robust",  # rDPO, Chowdhury et al. 2024 (label_smoothing = flip probability)
    "exo_pair",  # EXO, Ji et al. 2024 (label_smoothing = epsilon, must be > 0)
    "nca_pair",  # NCA, Chen et al. 2024
    "bco_pair",  # BCO, Jung et al. 2024
    "sppo_hard",  # SPPO with hard labels, Wu et al. 2024
    "aot",  # AOT, Melnyk et al. 2024 (sorts within a batch)
    "apo_zero",  # APO-zero, D'Oosterlinck et al. 2024
    "apo_down",  # APO-down, D'Oosterlinck et al. 2024
    "discopop",  # DiscoPOP, Chris Lu et al. 2024
    "sigmoid_norm",  # DPO on length-normalised log-ratios
)
# Losses that read `label_smoothing`; anywhere else a non-zero value would silently do nothing.
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot")


@dataclass
class DPOSpec(TrainSpec):
    KL_KNOB: ClassVar[str | None] = "beta"  # the x-axis of a reward/KL frontier
    TRL_CONFIG: ClassVar[str | None] = "trl:DPOConfig"
    TRAINS_ON_PAIRS: ClassVar[bool] = True

    name: str = "dpo"
    learning_rate: float = _f(1e-4, gt=0, le=1)
    per_device_train_batch_size: int = _f(8, ge=1)  # x4 accumulation: 32 pairs a step
    gradient_accumulation_steps: int = _f(4, ge=1)
    # Strength of the implicit KL penalty to the reference: higher stays closer to it.
    beta: float = _f(0.1, gt=0)
    loss_type: str = _f("sigmoid", choices=list(LOSS_TYPES))
    # Robust DPO: probability a label is flipped, < 0.5. EXO: epsilon (> 0). AOT: smoothing.
    label_smoothing: float = _f(0.0, ge=0, lt=0.5)
    # Reference log-probs computed once before training; the reference then never runs again
    # (and, without LoRA, is never held in memory next to the policy).
    precompute_ref_log_probs: bool = True
    # null: the train/eval batch size
    precompute_ref_batch_size: int | None = _f(None, ge=1, le=MAX_BATCH, why_high=BATCH)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.loss_type == "exo_pair" and self.label_smoothing == 0:
            raise ConfigError(
                "method.label_smoothing", 0.0, "loss_type=exo_pair needs > 0 (EXO suggests 1e-3)"
            )
        if self.label_smoothing > 0 and self.loss_type not in SMOOTHED_LOSSES:
            raise ConfigError(
                "method.label_smoothing",
                self.label_smoothing,
                f"only loss_type in {', '.join(SMOOTHED_LOSSES)} reads it; "
                f"set 0 for loss_type={self.loss_type}",
            )
