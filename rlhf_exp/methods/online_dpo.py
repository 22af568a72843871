"""Online DPO with TRL 1.16's experimental `OnlineDPOTrainer` (Guo et al. 2024).

    python run.py method=online_dpo                      # ranked by the learned reward model
    python run.py method=online_dpo method.reward=gold   # ranked by the dataset's gold reward
    python run.py -m arm=online_dpo_beta_0.05,online_dpo_beta_0.1,online_dpo_beta_0.5

Each optimiser step, the current policy samples two completions per prompt, the reward keeps
the better as "chosen", and the DPO loss (or IPO's) is taken on that pair against the SFT
reference (with LoRA: the adapters switched off). Everything around TRL is `run_online`'s, as
for RLOO and GRPO: the prompts cut from the left, the reward adapter that counts generated
tokens and stops on a non-finite score, the periodic held-out reward, saving before the
shared final evaluation. A generation is one micro-batch here: TRL samples afresh at every
micro-step, so resuming needs no stored completions.
"""

from __future__ import annotations

from typing import Any

from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

from rlhf_exp.config.online_dpo import OnlineDPOSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.methods import register
from rlhf_exp.methods.online_rl import OnlineAlgorithm, online_needs, run_online
from rlhf_exp.training import trl_config

# TRL's logged training metrics returned (last logged value) in the run's metrics.
LOGGED = (
    "objective/kl",  # sum over tokens of log pi - log pi_ref, the sampled pair's k1
    "objective/scores",  # mean reward of the sampled completions
    "objective/scores_margin",  # reward of chosen minus rejected
    "objective/entropy",
    "rewards/margins",  # DPO's implicit reward margin
    "rewards/accuracies",
    "val/contain_eos_token",
)


def online_dpo_config(spec: OnlineDPOSpec, ctx: RunContext, pad_id: int) -> OnlineDPOConfig:
    """TRL config: the shared CPU-sane trainer arguments, this method's knobs under TRL's
    names, then `method.trainer_kwargs` (`training.trl_config`)."""
    return trl_config(
        OnlineDPOConfig,
        spec,
        ctx,
        eval_strategy="no",  # held out: our own periodic evaluation (HeldOutReward)
        include_num_input_tokens_seen="no",  # TRL's batches hold prompts, not input_ids
        max_new_tokens=spec.max_completion_length,
        max_length=spec.max_length,  # prompt + completion in the log-prob forward
        beta=[spec.beta],
        loss_type=spec.loss_type,
        temperature=spec.temperature,
        top_k=0,  # plain sampling at `temperature`, as PPO and the evaluation sample
        top_p=1.0,
        missing_eos_penalty=spec.missing_eos_penalty,
        adam_epsilon=spec.adam_epsilon,
        # log-probs are compared across forward passes: dropout would make them disagree
        disable_dropout=True,
        # never sample PAD, as our generation does (a sampled PAD would vanish when decoded)
        generation_kwargs={"suppress_tokens": [pad_id]},
    )


ONLINE_DPO = OnlineAlgorithm(
    trainer_cls=OnlineDPOTrainer,
    config=online_dpo_config,
    # every micro-step samples its own pair of completions per prompt
    generations=lambda spec, steps: steps * spec.gradient_accumulation_steps,
    completions_per_generation=lambda args: 2 * args.per_device_train_batch_size * args.world_size,
    logged=LOGGED,
)


@register("online_dpo", needs=online_needs)
def run_online_dpo(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    return run_online(cfg, ctx, ONLINE_DPO)
