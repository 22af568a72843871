"""`method=eval`: the shared end-of-run evaluation of any saved policy, no training.

    python run.py method=eval policy_path=outputs/<date>/<time>/model
    python run.py method=eval policy_path=A/model reference_path=B/model

The reference defaults to the SFT policy of the same model+dataset (from the artifact cache,
trained there if missing), so a policy trained by this framework is scored exactly as its
own run scored it.
"""

from __future__ import annotations

from typing import Any

from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.errors import UserError
from rlhf_exp.evaluation import final_evaluation
from rlhf_exp.methods import register
from rlhf_exp.models import load_causal_lm, load_tokenizer


def _needs(run: RunConfig) -> tuple[str, ...]:
    """The SFT policy unless a reference is given; the reward model if the evaluation uses it."""
    stages = () if run.reference_path else ("sft",)
    return (*stages, "reward") if run.eval.reward_model else stages


@register("eval", needs=_needs, produces_model=False)
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    assert cfg.policy_path is not None  # schema: method=eval requires it
    tokenizer = load_tokenizer(cfg.policy_path, cfg.model)
    task = ctx.task(tokenizer)
    if task.eval_prompts is None or len(task.eval_prompts) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no evaluation prompts")
    policy = load_causal_lm(cfg.policy_path, cfg.model, tokenizer=tokenizer).eval()
    reference_dir = cfg.reference_path or str(ctx.upstream("sft"))
    reference = load_causal_lm(reference_dir, cfg.model, tokenizer=tokenizer).eval()
    metrics = final_evaluation(ctx, policy, tokenizer, task, reference=reference)
    return {**metrics, "eval/policy_path": cfg.policy_path, "eval/reference_path": reference_dir}
