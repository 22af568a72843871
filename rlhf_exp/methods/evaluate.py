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
    reference_dir = cfg.reference_path or str(ctx.upstream("sft"))
    _check_same_tokenizer(cfg, tokenizer, reference_dir)
    task = ctx.task(tokenizer)
    if task.eval_prompts is None or len(task.eval_prompts) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no evaluation prompts")
    policy = load_causal_lm(cfg.policy_path, cfg.model, tokenizer=tokenizer).eval()
    reference = load_causal_lm(reference_dir, cfg.model, tokenizer=tokenizer).eval()
    metrics = final_evaluation(ctx, policy, tokenizer, task, reference=reference)
    return {**metrics, "eval/policy_path": cfg.policy_path, "eval/reference_path": reference_dir}


def _check_same_tokenizer(cfg: RunConfig, tokenizer: Any, reference_dir: str) -> None:
    """KL and win rates compare the policy's and the reference's log-probs of the same token
    ids: a reference with another vocabulary (a policy trained from another base, or on other
    data, which trains the tiny base's tokenizer) would give numbers that mean nothing."""
    reference = load_tokenizer(reference_dir, cfg.model)
    if reference.get_vocab() == tokenizer.get_vocab():
        return
    what = (
        f"reference_path={cfg.reference_path}"
        if cfg.reference_path
        else f"the reference (the SFT policy of this model and dataset, {reference_dir})"
    )
    raise UserError(
        f"{what} has another tokenizer than policy_path={cfg.policy_path} "
        f"({len(reference)} against {len(tokenizer)} tokens): evaluate the policy against the "
        "model it was trained from, with reference_path=DIR"
    )
