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


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    eval_prompts: Any,
    eval_spec: Any,
    *,
    seed: int,
    gold_reward: str | None,
    extra_scorers: dict[str, Callable[[list[str], list[str]], list[float]]] | None = None,
    prefix: str = "eval",
) -> tuple[dict[str, float], Samples]:
    """Sample completions for the held-out prompts and score them; the shared end-of-run step.

    Returns (`{f"{prefix}/gold_reward": ..., f"{prefix}/length_mean": ..., ...}`, samples).
    Sampling is seeded with `seed` so a policy and its reference draw from the same RNG stream.
    `eval_spec` is the run's `EvalSpec`; `gold_reward` a registered reward name or None.
    """
    import torch

    from rlhf_exp.rewards import get_reward

    prompts = list(eval_prompts["prompt"])[: eval_spec.num_prompts or None]
    scorers = dict(extra_scorers or {})
    if gold_reward is not None:
        scorers["gold_reward"] = get_reward(gold_reward)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        samples = sample_policy(
            model,
            tokenizer,
            prompts,
            max_new_tokens=eval_spec.max_new_tokens,
            temperature=eval_spec.temperature,
            greedy=eval_spec.greedy,
            batch_size=eval_spec.batch_size,
        )
    scores = score_samples(samples, scorers)
    return {f"{prefix}/{k}": v for k, v in scores.items()}, samples
