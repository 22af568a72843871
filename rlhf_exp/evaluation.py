"""Shared evaluation of a policy on held-out prompts: sample, then score with reward functions.

Every method reports these numbers the same way, under the same keys, so runs compare.
(The full suite of issue 5 — KL, BLEU, win rates, samples tables — grows here.)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_exp.generation import generate


@dataclass
class Samples:
    prompts: list[str]
    completions: list[str]
    lengths: list[int]  # response tokens, EOS included
    ended: list[bool]


def sample_policy(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    batch_size: int = 64,
) -> Samples:
    rollout = generate(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        greedy=greedy,
        batch_size=batch_size,
    )
    return Samples(
        list(prompts),
        rollout.texts,
        rollout.response_mask.sum(1).tolist(),
        rollout.ended.tolist(),
    )


def score_samples(
    samples: Samples, scorers: dict[str, Callable[[list[str], list[str]], list[float]]]
) -> dict[str, float]:
    """Mean and std of each scorer over the samples, plus length and EOS statistics.

    Keys: `<name>` (mean), `<name>_std`, `length_mean`, `eos_fraction`.
    """
    out: dict[str, float] = {}
    for name, scorer in scorers.items():
        scores = scorer(samples.prompts, samples.completions)
        out[name] = statistics.fmean(scores)
        out[f"{name}_std"] = statistics.pstdev(scores)
    out["length_mean"] = statistics.fmean(samples.lengths)
    out["eos_fraction"] = statistics.fmean(float(e) for e in samples.ended)
    return out
