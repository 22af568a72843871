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
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

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
    score = rm_scorer if reward_name is None else get_reward(reward_name)
    prompts = min(len(task.eval_prompts), cfg.eval.num_prompts or len(task.eval_prompts))
    log.info(
        "best_of_n: %d prompts x n=%d samples, picked by %s; KL <= %.3f nats",
        prompts,
        spec.n,
        reward_name or "the reward model",
        analytic_kl(spec.n),
    )
    sampler = BestOfN(sft, tokenizer, cfg.eval, spec.n, score)
    metrics = final_evaluation(ctx, sampler, tokenizer, task, reference=sft, rm_scorer=rm_scorer)
    return {
        **metrics,
        "eval/kl_analytic": analytic_kl(spec.n),
        "eval/samples_generated": prompts * spec.n,
        "eval/selected_by": reward_name or "model",
    }
