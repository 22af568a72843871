"""Schema of method=best_of_n (see conf/method/best_of_n.yaml and rlhf_exp/methods/best_of_n.py).

    python run.py --cfg job method=best_of_n method.n=64   # the composed, validated config

Best-of-n trains nothing: the inherited training knobs (learning rate, steps, batch sizes,
token budget, ...) are unused; they exist so presets like debug=fast apply to every method.
Sampling follows the shared evaluation's `eval.*` keys (max_new_tokens, temperature,
batch_size, num_prompts). This module imports no torch (config is validated before anything
loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rlhf_exp.config.schema import BATCH, MAX_BATCH, TrainSpec, _f
from rlhf_exp.errors import ConfigError


@dataclass
class BestOfNSpec(TrainSpec):
    # The x-axis of a reward/KL frontier; KL(best-of-n || SFT) <= log n - (n-1)/n.
    KL_KNOB: ClassVar[str | None] = "n"

    name: str = "best_of_n"
    # Completions sampled from the SFT policy per prompt; the best one is kept. n=1 is the
    # SFT policy itself.
    n: int = _f(16, ge=1, le=MAX_BATCH, why_high=BATCH)
    # What picks the best: "model" (the learned reward model), "gold" (dataset.gold_reward),
    # a registered reward function name or package.module:function; as PPO's method.reward.
    reward: str = "model"
    # The whole curve n = 1..curve_max_n instead of one n (Gao et al. 2022): curve_max_n
    # samples per prompt, once, and the unbiased estimate of best-of-n's gold and proxy score
    # for every n from them (metrics.json: curve/n, curve/kl, curve/gold, curve/proxy); the
    # eval/* keys are then the curve's values at `n`. null: one n, the full evaluation.
    curve_max_n: int | None = _f(None, ge=1, le=MAX_BATCH, why_high=BATCH)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.curve_max_n is not None and self.n > self.curve_max_n:
            raise ConfigError(
                "method.n",
                self.n,
                f"must be <= method.curve_max_n={self.curve_max_n} (read off the curve)",
            )
