"""Best-of-n sampling from the SFT policy: the inference-time anchor of a reward/KL frontier.

    python run.py method=best_of_n debug=fast                  # n=16, the reward model picks
    python run.py method=best_of_n method.n=64 method.reward=gold
    python run.py -m arm=bon_n_4,bon_n_16,bon_n_64 debug=fast  # three points of its frontier

No training (Stiennon et al. 2020; Gao et al. 2022). For each held-out evaluation prompt the
SFT policy (upstream `sft`) samples n completions, a reward (`method.reward`, as PPO's: the
learned reward model, the dataset's gold reward, or a reward function) scores them in one
call, and the highest-scoring one (the first on a tie) is the "policy"'s completion. That
policy is evaluated like every trained one (`final_evaluation`: the same `eval/*` keys,
samples.md) against the SFT policy's own single sample per prompt, drawn from the same seed
as always: at n=1 the chosen completion is that sample, so every score equals its
`eval/sft/*` twin.

KL: a best-of-n policy has no model whose log-probs could be measured, so `eval/kl` (the
x-axis of comparison.md's frontier, as for every method) is the analytic value
`log n - (n-1)/n` of Stiennon et al., also reported as `eval/kl_analytic`. It is exact only
when an SFT sample's reward has no atoms (no ties, no completion of noticeable probability);
otherwise the true KL is lower (Beirami et al. 2024 prove it an upper bound), so best-of-n's
points sit at most this far right on the frontier. Greedy decoding has one completion per
prompt, so `eval/greedy/*` is the SFT policy's greedy decode (win rate 0.5).

The curve (`method.curve_max_n=N`, experiment=overoptimization): N samples per prompt, drawn
once (cached by the SFT policy, prompts and sampling settings, so runs that differ only in
their reward model share them), scored by the picking reward and the gold reward, and for
every n = 1..N the expected score of best-of-n (`best_of_n_curve`: the unbiased estimator of
Gao et al. 2022, appendix, over all n-subsets of the N at once, no resampling). metrics.json
gets `curve/n`, `curve/kl` (analytic), `curve/gold`, `curve/proxy` (the picking reward) and
their standard errors over prompts, and `eval/*` read off the curve at `method.n`.

    python run.py method=best_of_n method.curve_max_n=256 debug=fast
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_exp import signals
from rlhf_exp.config.best_of_n import BestOfNSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.errors import NonFiniteError, UserError
from rlhf_exp.evaluation import ModelSampler, Sampler, final_evaluation
from rlhf_exp.methods import register

log = logging.getLogger(__name__)

ScoreFn = Callable[[list[str], list[str]], list[float]]


def analytic_kl(n: int) -> float:
    """KL(best-of-n || reference) in nats: exact for tie-free rewards, else an upper bound."""
    return math.log(n) - (n - 1) / n


def select_best(scores: Sequence[float], n: int) -> list[int]:
    """Flat index of the highest of each consecutive group of `n` scores (the first on a tie).

    `scores` lists prompt 0's n candidates, then prompt 1's, ...: (B * n,) -> (B,) indices.
    """
    if n < 1 or len(scores) % n:
        raise ValueError(f"{len(scores)} scores do not split into groups of n={n}")
    if any(math.isnan(s) for s in scores):
        raise NonFiniteError("best_of_n: the reward returned NaN for a candidate completion")
    return [
        start + max(range(n), key=lambda j: scores[start + j])  # max keeps the first maximum
        for start in range(0, len(scores), n)
    ]


def take_rows(rollout: Any, rows: list[int]) -> Any:
    """The rollout restricted to `rows` (in that order); per-token log-probs are dropped."""
    from rlhf_exp.generation import Rollout

    return Rollout(
        rollout.prompt_ids[rows],
        rollout.prompt_mask[rows],
        rollout.response_ids[rows],
        rollout.response_mask[rows],
        [rollout.texts[i] for i in rows],
        rollout.ended[rows],
    )


class BestOfN(Sampler):
    """The best of `n` samples of `model` per prompt by `score`, as the evaluation's policy."""

    model = None  # no model of its own: the KL is stated, not measured

    def __init__(self, model: Any, tokenizer: Any, eval_spec: Any, n: int, score: ScoreFn):
        self.base = ModelSampler(model, tokenizer, eval_spec)
        self.n, self.score = n, score
        self.kl = analytic_kl(n)

    def sample(self, prompts: list[str], greedy: bool) -> Any:
        if greedy or self.n == 1:  # n greedy decodes are one; one sample leaves no choice
            return self.base.sample(prompts, greedy)
        # Each prompt n times in a row: generate batches eval.batch_size rows at a time.
        repeated = [p for p in prompts for _ in range(self.n)]
        candidates = self.base.sample(repeated, False)
        scores = self.score(repeated, candidates.texts)  # one call: the scorer batches
        return take_rows(candidates, select_best(scores, self.n))


def best_of_n_weights(N: int, ns: Sequence[int]) -> Any:
    """(len(ns), N) weights: row n holds, for i = 1..N, the probability that the i-th lowest
    of N distinct scores is the highest of n of them drawn without replacement,
    C(i-1, n-1) / C(N, n) (log-gamma, so N may be large)."""
    import numpy as np
    from scipy.special import gammaln

    i = np.arange(1, N + 1, dtype=float)
    out = np.zeros((len(ns), N))
    for row, n in enumerate(ns):
        if not 1 <= n <= N:
            raise ValueError(f"best-of-n needs 1 <= n <= N={N}, got n={n}")
        k = i[i >= n]
        log_c = gammaln(k) - gammaln(n) - gammaln(k - n + 1)  # log C(i-1, n-1)
        log_total = gammaln(N + 1) - gammaln(n + 1) - gammaln(N - n + 1)  # log C(N, n)
        out[row, i >= n] = np.exp(log_c - log_total)
    return out


def best_of_n_curve(select: Any, value: Any, ns: Sequence[int]) -> Any:
    """Expected `value` of best-of-n by `select`, for each prompt and each n: (P, len(ns)).

    `select` and `value` are (P, N): N samples per prompt, their picking score and the score
    to report (the gold reward; or `select` itself, for the proxy's own curve). The estimate
    averages over all C(N, n) subsets of size n at once, via order statistics (Gao et al. 2022,
    appendix): unbiased for best-of-n from fresh samples, with no resampling noise. A tie in
    `select` is broken uniformly at random (as `select_best`'s first maximum is, for samples in
    random order): the tied samples' values are replaced by their mean.
    """
    import numpy as np

    select, value = np.asarray(select, dtype=float), np.asarray(value, dtype=float)
    if np.isnan(select).any():
        raise NonFiniteError("best_of_n: the reward returned NaN for a candidate completion")
    order = np.argsort(select, axis=1, kind="stable")  # ascending: rank i = 1..N
    ranked, values = np.take_along_axis(select, order, 1), np.take_along_axis(value, order, 1)
    for row in range(ranked.shape[0]):
        _, starts, counts = np.unique(ranked[row], return_index=True, return_counts=True)
        if len(starts) < ranked.shape[1]:  # ties: their mean, whichever of them is picked
            values[row] = np.repeat(np.add.reduceat(values[row], starts) / counts, counts)
    return values @ best_of_n_weights(ranked.shape[1], ns).T


@signals.phase("evaluation")  # a signal stops it at once: it restarts on resume
def _candidates(
    cfg: RunConfig, ctx: RunContext, sft: Any, tokenizer: Any, prompts: list[str], N: int
) -> list[str]:
    """N completions of the SFT policy per prompt (prompt 0's N, then prompt 1's, ...), from
    the artifact cache: keyed by the SFT policy, the prompts and the sampling settings, so the
    runs of a sweep that differ only in their reward model sample once."""
    import hashlib
    import json
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from rlhf_exp.context import stage_key, upstream_run

    source = cfg.upstream.sft.path
    key = {
        "sft": str(Path(source).resolve()) if source else stage_key(upstream_run(cfg, "sft")),
        "prompts": hashlib.sha256(json.dumps(prompts).encode()).hexdigest(),
        "n": N,
        "seed": cfg.seed,
        "sampling": {
            k: getattr(cfg.eval, k) for k in ("max_new_tokens", "temperature", "batch_size")
        },
    }
    repeated = [p for p in prompts for _ in range(N)]
    sampler = ModelSampler(sft, tokenizer, cfg.eval)
    step = cfg.eval.batch_size  # one generate call per batch: the same RNG stream as one call

    def build(out: Path) -> None:
        texts: list[str] = []
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            for start in tqdm(range(0, len(repeated), step), desc=f"best-of-{N} samples"):
                texts += sampler.sample(repeated[start : start + step], False).texts
        (out / "texts.json").write_text(json.dumps(texts))

    entry = ctx.cache.get_or_build("bon_samples", key, build)
    return json.loads((entry / "texts.json").read_text())


def _run_curve(
    cfg: RunConfig,
    ctx: RunContext,
    sft: Any,
    tokenizer: Any,
    task: Any,
    score: ScoreFn,
    rm_scorer: ScoreFn | None,
    reward_name: str | None,
) -> dict[str, Any]:
    """Best-of-n for every n = 1..curve_max_n from one set of samples (module docstring)."""
    import numpy as np

    from rlhf_exp.rewards import get_reward

    spec: BestOfNSpec = cfg.method  # type: ignore[assignment]
    N = spec.curve_max_n
    prompts = list(task.eval_prompts["prompt"])[: cfg.eval.num_prompts or None]
    log.info("best_of_n curve: %d prompts x %d samples, n = 1..%d", len(prompts), N, N)
    texts = _candidates(cfg, ctx, sft, tokenizer, prompts, N)
    repeated = [p for p in prompts for _ in range(N)]
    shape = (len(prompts), N)
    picked_by = np.asarray(score(repeated, texts), dtype=float).reshape(shape)
    scores = {"proxy": picked_by}
    if task.gold_reward is not None:
        gold = get_reward(task.gold_reward, "dataset.gold_reward")(repeated, texts)
        scores["gold"] = np.asarray(gold, dtype=float).reshape(shape)
    if rm_scorer is not None:
        rm = picked_by if score is rm_scorer else rm_scorer(repeated, texts)
        scores["rm"] = np.asarray(rm, dtype=float).reshape(shape)
    ns = list(range(1, N + 1))
    out: dict[str, Any] = {"curve/n": ns, "curve/kl": [analytic_kl(n) for n in ns]}
    for name, values in scores.items():
        per_prompt = best_of_n_curve(picked_by, values, ns)  # (P, N)
        one = len(prompts) == 1  # no spread to measure
        se = np.zeros(N) if one else per_prompt.std(0, ddof=1) / math.sqrt(len(prompts))
        out[f"curve/{name}"] = per_prompt.mean(0).tolist()
        out[f"curve/{name}_se"] = se.tolist()
    # the single-n keys, read off the curve: at n=1 the SFT policy (every sample's mean)
    at = spec.n - 1
    for name, key in (("gold", "gold_reward"), ("rm", "rm_reward")):
        if f"curve/{name}" in out:
            out[f"eval/{key}"] = out[f"curve/{name}"][at]
            out[f"eval/sft/{key}"] = out[f"curve/{name}"][0]
    if "eval/gold_reward" in out:
        out["eval/gold_reward_gain"] = out["eval/gold_reward"] - out["eval/sft/gold_reward"]
    used = ctx.upstream_metrics("reward")  # which reward model, its held-out accuracy
    return {
        **out,
        "eval/kl": analytic_kl(spec.n),
        "eval/kl_analytic": analytic_kl(spec.n),
        "eval/samples_generated": len(texts),
        "eval/selected_by": reward_name or "model",
        **{f"upstream/reward/{k}": v for k, v in used.items()},
    }


def _needs(run: RunConfig) -> tuple[str, ...]:
    """The reward model only when it picks the best or the evaluation scores with it."""
    spec: BestOfNSpec = run.method  # type: ignore[assignment]
    uses_rm = spec.reward == "model" or run.eval.reward_model
    return ("sft", "reward") if uses_rm else ("sft",)


@register("best_of_n", needs=_needs, produces_model=False)
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    from rlhf_exp.models import load_causal_lm, load_tokenizer
    from rlhf_exp.rewards import get_reward, resolve_reward

    spec: BestOfNSpec = cfg.method  # type: ignore[assignment]
    reward_name = resolve_reward(spec.reward, cfg.dataset.gold_reward)  # None: the RM
    sft_dir = str(ctx.upstream("sft"))
    tokenizer = load_tokenizer(sft_dir, cfg.model)
    task = ctx.task(tokenizer)
    if task.eval_prompts is None or len(task.eval_prompts) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no evaluation prompts")
    sft = load_causal_lm(sft_dir, cfg.model, tokenizer=tokenizer).eval()
    # One reward model, loaded once: it picks (reward=model) and scores eval/rm_reward.
    rm_scorer = ctx.reward_scorer() if reward_name is None or cfg.eval.reward_model else None
    score = rm_scorer if reward_name is None else get_reward(reward_name, "method.reward")
    prompts = min(len(task.eval_prompts), cfg.eval.num_prompts or len(task.eval_prompts))
    log.info(
        "best_of_n: %d prompts x n=%d samples, picked by %s; KL <= %.3f nats",
        prompts,
        spec.n,
        reward_name or "the reward model",
        analytic_kl(spec.n),
    )
    if spec.curve_max_n is not None:
        return _run_curve(cfg, ctx, sft, tokenizer, task, score, rm_scorer, reward_name)
    sampler = BestOfN(sft, tokenizer, cfg.eval, spec.n, score)
    metrics = final_evaluation(ctx, sampler, tokenizer, task, reference=sft, rm_scorer=rm_scorer)
    return {
        **metrics,
        "eval/kl_analytic": analytic_kl(spec.n),
        "eval/samples_generated": prompts * spec.n,
        "eval/selected_by": reward_name or "model",
    }
