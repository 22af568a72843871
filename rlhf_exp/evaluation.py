"""Shared evaluation of a policy on held-out prompts: sample, then score with reward functions.

Every method reports these numbers the same way, under the same keys, so runs compare:
`evaluate_policy` is the cheap periodic check during training (gold reward, length);
`final_evaluation` (via `evaluate_alignment`) the full end-of-run comparison with the
reference (SFT) policy: gold and RM reward, KL, BLEU, win rates, diversity, samples table.
The policy side is a `Sampler`: a trained model's own samples (`ModelSampler`, what a model
passed in becomes), or a policy that is not one model, such as best-of-n.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhf_exp import signals
from rlhf_exp.generation import Rollout, generate
from rlhf_exp.hardware import compute_precision

log = logging.getLogger(__name__)

# Per-prompt scores of the final evaluation, beside metrics.json in the run dir.
SCORES_FILE = "eval_scores.json"


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
    kl_reference: Any | None = None,
) -> tuple[dict[str, float], Samples]:
    """Sample completions for the held-out prompts and score them; the periodic check.

    Returns (`{f"{prefix}/gold_reward": ..., f"{prefix}/length_mean": ..., ...}`, samples).
    Sampling is seeded with `seed` so a policy and its reference draw from the same RNG stream.
    `eval_spec` is the run's `EvalSpec`; `gold_reward` a registered reward name or None.
    `kl_reference`: also measure `kl` / `kl_k3`, KL(model || kl_reference) from the model's
    samples as the final evaluation does; a context manager yielding the reference model (a
    LoRA policy's adapters switched off) is taken as well as a model.
    """
    from contextlib import AbstractContextManager, nullcontext

    import torch

    from rlhf_exp.rewards import get_reward

    prompts = list(eval_prompts["prompt"])[: eval_spec.num_prompts or None]
    scorers = dict(extra_scorers or {})
    if gold_reward is not None:
        scorers["gold_reward"] = get_reward(gold_reward, "dataset.gold_reward")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        rollout = ModelSampler(model, tokenizer, eval_spec).sample(prompts, greedy=False)
    samples = Samples(
        prompts, rollout.texts, rollout.response_mask.sum(1).tolist(), rollout.ended.tolist()
    )
    scores = score_samples(samples, scorers)
    if kl_reference is not None:
        logps = {"temperature": eval_spec.temperature, "pad_id": tokenizer.pad_token_id}
        own = completion_logprobs(model, rollout, **logps)
        reference = (
            kl_reference
            if isinstance(kl_reference, AbstractContextManager)
            else nullcontext(kl_reference)
        )
        with reference as ref_model:
            ref = completion_logprobs(ref_model, rollout, **logps)
        kl = sequence_kl(own, ref, rollout.response_mask)
        scores["kl"], scores["kl_k3"] = kl["k1"], kl["k3"]
    return {f"{prefix}/{k}": v for k, v in scores.items()}, samples


def completion_logprobs(
    model: Any, rollout: Any, *, temperature: float, pad_id: int, batch_size: int = 64
) -> Any:
    """Log-prob of every response token of `rollout` under `model` at `temperature`: a (B, R)
    tensor, 0 after each response's end (`rlhf_exp.rl.token_logprobs`, `batch_size` rows at a
    time, sorted by prompt length and cut of their shared padding: `rlhf_exp.rl.by_length`).

    Positions count the real tokens of left-padded rows, as `generate` assigned them, and PAD
    is suppressed as in sampling, so a model scored on its own samples reproduces their
    log-probs.
    """
    from rlhf_exp.rl import by_rows, token_logprobs

    response_ids, T = rollout.response_ids, temperature

    def forward(rows, input_ids, attention_mask):
        return (token_logprobs(model, input_ids, attention_mask, response_ids[rows], T, pad_id),)

    was_training = model.training
    model.eval()
    try:
        (logps,) = by_rows(
            forward, rollout.input_ids, rollout.attention_mask, response_ids.shape[1], batch_size
        )
    finally:
        model.train(was_training)
    return logps.masked_fill(~rollout.response_mask.bool(), 0.0)


def sequence_kl(policy_logps: Any, reference_logps: Any, mask: Any) -> dict[str, float]:
    """KL(policy || reference) per sampled sequence, averaged: k1 (the mean log-ratio,
    unbiased, negative by sampling noise when the two are close) and k3 (unbiased and never
    negative), each the sum of its per-token estimate (`rlhf_exp.rl.kl_estimate`)."""
    from rlhf_exp.rl import kl_estimate

    out = {}
    for kind in ("k1", "k3"):
        per_token = kl_estimate(policy_logps, reference_logps, kind) * mask  # (B, R)
        out[kind] = per_token.sum(1).mean().item()
    return out


class Sampler:
    """The policy side of `evaluate_alignment`: one completion per prompt.

    `sample(prompts, greedy)` draws from the torch RNG as the evaluation seeded it, the same
    stream the reference's samples come from. `model` is the policy as a model, whose log-probs
    on its own samples give the measured `eval/kl`; a policy that has no such model (best-of-n)
    sets `model = None` and states its KL to the reference in `kl` (nats) instead.
    """

    model: Any | None = None
    kl: float | None = None

    def sample(self, prompts: list[str], greedy: bool) -> Rollout:
        raise NotImplementedError


class ModelSampler(Sampler):
    """A model's own samples at `spec.temperature` (or greedy), `spec.batch_size` at a time:
    how every trained policy and every reference is evaluated. `spec` is an `EvalSpec`."""

    def __init__(self, model: Any, tokenizer: Any, spec: Any) -> None:
        self.model, self.tokenizer, self.spec = model, tokenizer, spec

    def sample(self, prompts: list[str], greedy: bool) -> Rollout:
        return generate(
            self.model,
            self.tokenizer,
            prompts,
            max_new_tokens=self.spec.max_new_tokens,
            temperature=self.spec.temperature,
            greedy=greedy,
            batch_size=self.spec.batch_size,
        )


@dataclass
class _Side:
    """One policy's completions on the eval prompts and their scores."""

    samples: Samples
    rollout: Any
    gold: list[float] | None
    rm: list[float] | None


def _sample_side(
    sampler: Sampler,
    prompts: list[str],
    seed: int,
    greedy: bool,
    gold_fn: Callable | None,
    rm_scorer: Callable | None,
) -> _Side:
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # policy and reference draw from the same RNG stream
        rollout = sampler.sample(prompts, greedy)
    samples = Samples(
        prompts, rollout.texts, rollout.response_mask.sum(1).tolist(), rollout.ended.tolist()
    )
    gold = gold_fn(prompts, rollout.texts) if gold_fn else None
    rm = rm_scorer(prompts, rollout.texts) if rm_scorer else None
    return _Side(samples, rollout, gold, rm)


def _side_metrics(side: _Side, references: list[str], seed: int) -> dict[str, float]:
    from rlhf_exp.eval_metrics import bleu, bootstrap_ci, distinct_n

    out = score_samples(side.samples, {})
    texts = side.samples.completions
    if side.gold is not None:
        out["gold_reward"] = statistics.fmean(side.gold)
        out["gold_reward_std"] = statistics.pstdev(side.gold)
        out["gold_reward_ci_low"], out["gold_reward_ci_high"] = bootstrap_ci(side.gold, seed=seed)
    if side.rm is not None:
        out["rm_reward"] = statistics.fmean(side.rm)
    if any(references):
        scores = bleu(references, texts)
        out["bleu"], out["bleu_corpus"] = scores["sentence"], scores["corpus"]
    out["distinct_1"], out["distinct_2"] = distinct_n(texts, 1), distinct_n(texts, 2)
    return out


def samples_table(
    prompts: list[str], references: list[str], policy: _Side, reference: _Side, rows: int = 8
) -> str:
    """Markdown: prompt, reference completion, SFT and policy completions, and their scores:
    gold, else the reward model's (a user's data has no gold reward), else none."""

    def cell(text: str, keep: int = 0) -> str:
        if keep and len(text) > keep:  # a long dialogue: its end is what the reply answers
            text = "…" + text[-keep:]
        return text.replace("|", "\\|").replace("\n", " ").strip()

    name, mine, theirs = next(
        (
            (name, getattr(policy, attr), getattr(reference, attr))
            for name, attr in (("gold", "gold"), ("RM", "rm"))
            if getattr(policy, attr) and getattr(reference, attr)
        ),
        (None, None, None),
    )
    head = ["prompt", "reference", "SFT", "policy"]
    head += [f"{name} SFT", f"{name} policy"] if name else []
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i in range(min(rows, len(prompts))):
        cells = [cell(prompts[i], keep=300), cell(references[i])]
        cells += [cell(reference.samples.completions[i]), cell(policy.samples.completions[i])]
        cells += [f"{theirs[i]:.2f}", f"{mine[i]:.2f}"] if name else []
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def evaluate_alignment(
    policy: Any | Sampler,
    tokenizer: Any,
    eval_prompts: Any,
    spec: Any,
    *,
    seed: int,
    gold_reward: str | None,
    reference: Any | None = None,
    rm_scorer: Callable[[list[str], list[str]], list[float]] | None = None,
    per_prompt: dict[str, list[float]] | None = None,
) -> tuple[dict[str, float], str]:
    """The full held-out evaluation of a policy against its reference (SFT) policy.

    `policy` is the trained model, or a `Sampler` for a policy that is not one model.
    `reference` is the starting policy; None means the policy model is a peft model whose
    disabled adapters are the reference (no second copy of the weights). Returns (metrics,
    samples markdown). Keys, under `eval/` for the policy and `eval/sft/` for the reference:
    gold_reward (+ _std, _ci_low, _ci_high), rm_reward, bleu, bleu_corpus, length_mean,
    eos_fraction, distinct_1, distinct_2; for the policy also kl (sequence-level
    KL(policy || reference) in nats: measured from the policy model's samples, or the
    sampler's stated `kl`), win_rate_gold and win_rate_rm (against the reference's completion
    of the same prompt, ties one half); and with `spec.greedy`,
    eval/greedy/{gold_reward,win_rate_gold} from greedy decoding. `per_prompt`, when given,
    receives the sampled side's per-prompt scores (gold, sft_gold, rm, sft_rm, kl: each
    completion's sequence k1), what a report needs for intervals over prompts and seeds.
    """
    from contextlib import nullcontext

    from rlhf_exp.eval_metrics import win_rate
    from rlhf_exp.rewards import get_reward

    n = spec.num_prompts or None
    prompts = list(eval_prompts["prompt"])[:n]
    columns = getattr(eval_prompts, "column_names", None) or list(eval_prompts)
    references = (
        list(eval_prompts["reference"])[:n] if "reference" in columns else [""] * len(prompts)
    )
    gold_fn = get_reward(gold_reward, "dataset.gold_reward") if gold_reward else None
    sampler = policy if isinstance(policy, Sampler) else ModelSampler(policy, tokenizer, spec)
    measured = sampler.model is not None  # else the sampler states its KL
    if not measured and (sampler.kl is None or reference is None):
        raise ValueError("a sampler without a model needs its `kl` and an explicit reference")

    def as_reference():
        return nullcontext(reference) if reference is not None else _adapters_off(sampler.model)

    pad_id = tokenizer.pad_token_id
    sides = {}
    for greedy in (False, True) if spec.greedy else (False,):
        mine = _sample_side(sampler, prompts, seed, greedy, gold_fn, rm_scorer)
        with as_reference() as ref_model:
            theirs = _sample_side(
                ModelSampler(ref_model, tokenizer, spec), prompts, seed, greedy, gold_fn, rm_scorer
            )
            ref_logps = (
                None
                if greedy or not measured
                else completion_logprobs(
                    ref_model, mine.rollout, temperature=spec.temperature, pad_id=pad_id
                )
            )
        sides[greedy] = (mine, theirs, ref_logps)

    mine, theirs, ref_logps = sides[False]
    metrics = {f"eval/{k}": v for k, v in _side_metrics(mine, references, seed).items()}
    metrics |= {f"eval/sft/{k}": v for k, v in _side_metrics(theirs, references, seed).items()}
    if measured:
        own = completion_logprobs(
            sampler.model, mine.rollout, temperature=spec.temperature, pad_id=pad_id
        )
        kl = sequence_kl(own, ref_logps, mine.rollout.response_mask)
        metrics["eval/kl"], metrics["eval/kl_k3"] = kl["k1"], kl["k3"]
        if per_prompt is not None:
            mask = mine.rollout.response_mask.to(own.dtype)
            per_prompt["kl"] = ((own - ref_logps) * mask).sum(1).tolist()
    else:
        metrics["eval/kl"] = sampler.kl
    if mine.gold is not None:
        metrics["eval/win_rate_gold"] = win_rate(mine.gold, theirs.gold)
    if mine.rm is not None:
        metrics["eval/win_rate_rm"] = win_rate(mine.rm, theirs.rm)
    if True in sides and mine.gold is not None:
        g_mine, g_theirs, _ = sides[True]
        metrics["eval/greedy/gold_reward"] = statistics.fmean(g_mine.gold)
        metrics["eval/sft/greedy/gold_reward"] = statistics.fmean(g_theirs.gold)
        metrics["eval/greedy/win_rate_gold"] = win_rate(g_mine.gold, g_theirs.gold)
    if per_prompt is not None:
        for name, values in (("gold", mine.gold), ("sft_gold", theirs.gold)):
            if values is not None:
                per_prompt[name] = list(values)
        for name, values in (("rm", mine.rm), ("sft_rm", theirs.rm)):
            if values is not None:
                per_prompt[name] = list(values)
    return metrics, samples_table(prompts, references, mine, theirs)


def _adapters_off(policy: Any) -> Any:
    """Context in which `policy` (a peft model) is its base model; yields the model."""
    from contextlib import contextmanager

    if not hasattr(policy, "disable_adapter"):
        raise ValueError(
            "reference=None needs a peft policy whose disabled adapters are the reference"
        )

    @contextmanager
    def context():
        with policy.disable_adapter():
            yield policy

    return context()


@signals.phase("evaluation")  # a signal stops it at once: it restarts on resume
def final_evaluation(
    ctx: Any,
    policy: Any | Sampler,
    tokenizer: Any,
    task: Any,
    *,
    reference: Any | None = None,
    rm_scorer: Callable[[list[str], list[str]], list[float]] | None = None,
) -> dict[str, float]:
    """`evaluate_alignment` on the task's held-out prompts, as every policy method ends.

    Adds `eval/gold_reward_gain` (policy minus reference), logs the samples table to
    TensorBoard and writes it to `<run dir>/samples.md`. `rm_scorer` None with
    `eval.reward_model` loads the cached reward model. Returns {} when the task has no
    evaluation prompts.
    """
    from rlhf_exp.artifacts import atomic_write_text

    if task.eval_prompts is None or len(task.eval_prompts) == 0:
        return {}
    run = ctx.run
    if rm_scorer is None and run.eval.reward_model:
        rm_scorer = ctx.reward_scorer()
    if task.gold_reward is None:
        scored = "the learned reward model's score (eval/rm_reward, win_rate_rm), " * (
            rm_scorer is not None
        )
        log.info(
            "dataset %r has no gold reward: the evaluation reports %sKL, length and diversity",
            run.dataset.name,
            scored,
        )
    per_prompt: dict[str, list[float]] = {}
    with compute_precision(run.model.precision):
        metrics, table = evaluate_alignment(
            policy,
            tokenizer,
            task.eval_prompts,
            run.eval,
            seed=run.seed,
            gold_reward=task.gold_reward,
            reference=reference,
            rm_scorer=rm_scorer,
            per_prompt=per_prompt,
        )
    # per-prompt scores beside metrics.json: a report's intervals over prompts and seeds
    atomic_write_text(ctx.run_dir / SCORES_FILE, json.dumps(per_prompt) + "\n")
    if "eval/gold_reward" in metrics:
        metrics["eval/gold_reward_gain"] = (
            metrics["eval/gold_reward"] - metrics["eval/sft/gold_reward"]
        )
    ctx.tracker.log_text("eval/samples", table)
    atomic_write_text(ctx.run_dir / "samples.md", table + "\n")
    return metrics
