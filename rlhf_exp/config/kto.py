"""Schema of method=kto (TRL `KTOConfig` knobs we expose; see conf/method/kto.yaml).

    python run.py --cfg job method=kto method.beta=0.5   # the composed, validated config

Field names follow TRL's `KTOConfig`. Rows reach TRL already tokenised and cut by the
project's one rule (`max_length`, `max_completion_length`; rlhf_exp/data/tokens.py).
`train_batch_tokens` is unused: each micro-batch estimates KTO's KL reference point from its own
rows, so KTO's micro-batches stay as configured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.schema import BATCH, MAX_BATCH, TrainSpec, _f
from rlhf_exp.errors import ConfigError


@dataclass
class KTOSpec(TrainSpec):
    KL_KNOB: ClassVar[str | None] = "beta"  # the x-axis of a reward/KL frontier
    TRL_CONFIG: ClassVar[str | None] = "trl:KTOConfig"  # what method.trainer_kwargs feed
    # TRAINS_ON_PAIRS stays False: KTO reads an unpaired split when the data has one, whose
    # rows are checked up front instead; pairs turned into rows are checked by the method.
    TRAINS_ON_UNPAIRED: ClassVar[bool] = True

    name: str = "kto"
    learning_rate: float = _f(1e-4, gt=0, le=1)
    # KTO estimates its KL reference point from the other rows of each micro-batch, so a
    # micro-batch needs at least 2 rows (checked below, with the reason).
    per_device_train_batch_size: int = _f(16, ge=1)
    gradient_accumulation_steps: int = _f(4, ge=1)
    # Strength of the KL penalty to the reference: higher stays closer to it.
    beta: float = _f(0.1, gt=0)
    # Loss weights of desirable (label true) and undesirable rows. null: set from the training
    # rows' counts so that desirable_weight * n_desirable == undesirable_weight * n_undesirable
    # (inside the KTO paper's range [1, 4/3], Eq. 8) with a mean weight of 1 per row; 1 and 1
    # for data derived from pairs. With one of them set, the other follows the same ratio.
    desirable_weight: float | None = _f(None, gt=0)
    undesirable_weight: float | None = _f(None, gt=0)
    # Reference log-probs (of each row and of its KL row) computed once before training.
    precompute_ref_log_probs: bool = True
    # null: the train/eval batch size
    precompute_ref_batch_size: int | None = _f(None, ge=1, le=MAX_BATCH, why_high=BATCH)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.per_device_train_batch_size < 2:
            raise ConfigError(
                "method.per_device_train_batch_size",
                self.per_device_train_batch_size,
                "must be >= 2 for KTO: its KL reference point is estimated from the other rows "
                "of each micro-batch (with 1 row it would equal the row's own reward)",
            )
        if self.group_by_length:
            raise ConfigError(
                "method.group_by_length",
                True,
                "must be false for KTO: its KL rows are built against a fixed batch order "
                "(rows are shuffled once instead)",
            )
