"""Online RL from the SFT policy with TRL 1.16's `RLOOTrainer` and `GRPOTrainer`.

    python run.py method=rloo                        # vs the learned reward model (cached)
    python run.py method=grpo method.reward=gold     # vs the dataset's gold reward
    python run.py method=rloo lora=default           # LoRA; reference = adapters switched off
    python run.py -m arm=rloo_beta_0.02,rloo_beta_0.05,rloo_beta_0.2,grpo_beta_0.05

Both sample `num_generations` completions per prompt, score them with one reward (the
learned reward model, the gold reward or a registered reward function: `method.reward`, as
PPO's) and need no critic: the other completions of the same prompt are the baseline.
RLOO (Ahmadian et al. 2024, Eq. 6) subtracts the leave-one-out mean and puts the KL to the
reference into the reward (sequence-level k1, times `beta`); GRPO (Shao et al. 2024, Eq. 3)
normalises by the group's mean and std and adds a per-token k3 KL term (times `beta`) to the
loss. One generation (per_device_train_batch_size x steps_per_generation completions) feeds
`num_iterations` clipped passes, as PPO's rollout feeds its `ppo_epochs`.

What this module adds around TRL, the same for both trainers (`run_online`):
- Prompts: the training prompts PPO uses, unique, cut from the LEFT to
  `max_length - max_completion_length` tokens. TRL 1.16 has no prompt budget (it tokenises the
  whole prompt), so a prompt that is too long reaches TRL as the text of its last tokens
  (`fit_prompt_texts`); the reward still sees the whole prompt, as PPO's does.
- The reward as a TRL reward function (`RewardFunction`), which also counts generated tokens
  and stops the run on a non-finite score.
- Exact resume: TRL keeps a generation's completions in memory between optimiser steps, so a
  checkpoint between two generations (every SIGTERM stop) also stores them (`ResumableRL`).
- The held-out gold (and RM) reward every `eval_steps`, as PPO logs it, and the shared final
  evaluation against the SFT policy (with LoRA: the adapters switched off, as TRL's own
  reference is).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

from rlhf_exp.config.online_rl import OnlineRLSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.data.tokens import encode, fit_prompts
from rlhf_exp.errors import NonFiniteError, UserError
from rlhf_exp.evaluation import evaluate_policy, final_evaluation
from rlhf_exp.methods import register
from rlhf_exp.models import (
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    save_merged,
)
from rlhf_exp.training import run_training, throughput, trl_config

log = logging.getLogger(__name__)

# File in a trainer checkpoint holding the current generation's completions (per process).
GENERATION_FILE = "generation_rank{rank}.pt"
# TRL's logged training metrics returned (last logged value) in the run's metrics.
LAST_LOGGED = ("reward", "reward_std", "kl", "entropy", "completions/mean_length")


# ------------------------------------------------------------------------------- reward
def online_needs(run: RunConfig) -> tuple[str, ...]:
    """The reward model only when it is the reward or the evaluation scores with it."""
    spec = run.method
    return ("sft", "reward") if spec.reward == "model" or run.eval.reward_model else ("sft",)


class RewardFunction:
    """A `(prompts, completions) -> scores` reward as TRL calls it (keyword arguments; TRL
    logs it as `rewards/<__name__>/mean`). Scores the whole prompt (the `uncut_prompt`
    column) when there is one, counts the tokens TRL generated (EOS included) and stops the
    run on a NaN/inf score, which TRL would otherwise treat as "unscorable" and skip."""

    def __init__(self, score: Callable[[list[str], list[str]], list[float]], name: str) -> None:
        self.score, self.__name__ = score, name
        self.generated_tokens = 0

    def __call__(
        self,
        prompts: list[str],
        completions: list[str],
        completion_ids: list[list[int]],
        uncut_prompt: list[str] | None = None,
        trainer_state: Any = None,
        **_: Any,
    ) -> list[float]:
        self.generated_tokens += sum(len(ids) for ids in completion_ids)
        scores = self.score(list(uncut_prompt or prompts), list(completions))
        if not all(math.isfinite(s) for s in scores):
            step = trainer_state.global_step + 1 if trainer_state is not None else "?"
            raise NonFiniteError(
                f"reward {self.__name__} returned a non-finite score at step {step}; stopped, "
                "the last checkpoint before it is kept"
            )
        return scores


# ------------------------------------------------------------------------------ prompts
def fit_prompt_texts(
    tokenizer: Any, prompts: Sequence[str], max_tokens: int
) -> tuple[list[str], list[int], list[bool]]:
    """Each prompt as a text that TRL tokenises to at most `max_tokens` tokens.

    A prompt that fits is kept as it is; a longer one becomes the decoded text of its last
    tokens (`data.tokens.fit_prompts`, the project's left cut). Decoding and re-encoding can
    merge a cut word differently, so tokens are dropped from the left until it fits. Returns
    (texts, token counts before cutting, which were cut).
    """
    room = max_tokens - tokenizer.num_special_tokens_to_add()  # TRL adds special tokens
    whole = encode(tokenizer, prompts)
    kept = fit_prompts(tokenizer, prompts, room)
    texts, cut = [], []
    for text, ids, tail in zip(prompts, whole, kept, strict=True):
        cut.append(len(tail) < len(ids))
        while cut[-1]:
            text = tokenizer.decode(tail, clean_up_tokenization_spaces=False)
            if len(encode(tokenizer, [text])[0]) <= room or len(tail) <= 1:
                break
            tail = tail[1:]
        texts.append(text)
    return texts, [len(ids) for ids in whole], cut


def training_prompts(ctx: RunContext, task: Any, tokenizer: Any, spec: Any) -> Any:
    """The train set TRL samples from: `prompt` (what the policy continues) and
    `uncut_prompt` (what the reward reads), from the SFT demonstrations' prompts (else the
    preference pairs'), unique and in a stable order, as PPO's. Joins the data report."""
    from datasets import Dataset

    source = task.sft_train if task.sft_train is not None else task.pref_train
    if source is None or len(source) == 0:
        raise UserError(f"dataset {ctx.run.dataset.name!r} has no prompts to train on")
    prompts = list(dict.fromkeys(source["prompt"]))
    budget = spec.max_length - spec.max_completion_length
    texts, lengths, cut = fit_prompt_texts(tokenizer, prompts, budget)
    q = statistics.quantiles(lengths, n=10) if len(lengths) > 1 else [lengths[0]] * 9
    stats = {
        "rows": float(len(prompts)),
        "prompt_tokens_p50": float(statistics.median(lengths)),
        "prompt_tokens_p90": float(q[8]),
        "prompt_tokens_max": float(max(lengths)),
        "prompt_truncated_fraction": sum(cut) / len(cut),
    }
    ctx.data_report["train_prompts"] = stats
    line = (
        f"{len(prompts)} unique prompts, tokens p50/p90/max {stats['prompt_tokens_p50']:.0f}/"
        f"{stats['prompt_tokens_p90']:.0f}/{stats['prompt_tokens_max']:.0f}, "
        f"{sum(cut)} cut from the left to {budget} tokens"
    )
    log.info("data train_prompts: %s", line)
    ctx.tracker.log_text("data/train_prompts", line)
    return Dataset.from_dict({"prompt": texts, "uncut_prompt": prompts})


# ------------------------------------------------------------------------------ trainer
class ResumableRL:
    """Mixed into a TRL online trainer: a checkpoint also holds the generation in use.

    TRL samples a generation once and takes `steps_per_generation x num_iterations`
    micro-steps from it, kept only in memory (`_buffered_inputs`, counted by `_step`). A run
    resumed between two generations would sample a new one from a different point of the
    RNG stream; with these two saved and restored it continues exactly. Restored where TRL's
    GRPO restores its own extra state (`_load_optimizer_and_scheduler`).
    """

    def _generation_file(self, checkpoint: str | Path) -> Path:
        return Path(checkpoint) / GENERATION_FILE.format(rank=self.args.process_index)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)  # type: ignore[misc]
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        state = {"step": self._step, "buffered_inputs": self._buffered_inputs}
        torch.save(state, self._generation_file(folder))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)  # type: ignore[misc]
        path = self._generation_file(checkpoint) if checkpoint else None
        if path is not None and path.is_file():
            state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
            self._step, self._buffered_inputs = state["step"], state["buffered_inputs"]


class RLOO(ResumableRL, RLOOTrainer):
    pass


class GRPO(ResumableRL, GRPOTrainer):
    pass


class HeldOutReward(TrainerCallback):
    """Every `every` optimiser steps (rank 0): the policy's gold (and RM) reward on held-out
    prompts, logged as `eval/gold_reward`, ... like PPO's periodic evaluation. Its sampling
    runs on a forked RNG, so training draws the same numbers with or without it."""

    def __init__(self, evaluate: Callable[[Any], dict[str, float]], every: int, tracker: Any):
        self.evaluate, self.every, self.tracker = evaluate, every, tracker

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any):
        if state.global_step % self.every == 0 and state.is_world_process_zero:
            self.tracker.log_scalars(self.evaluate(model), state.global_step)


def online_config(spec: OnlineRLSpec, ctx: RunContext, config_cls: type, pad_id: int) -> Any:
    """TRL config: the shared CPU-sane trainer arguments, the knobs RLOO and GRPO share, the
    fields the method's schema adds to `OnlineRLSpec` (named as in TRL's config), then
    `method.trainer_kwargs` (`training.trl_config`)."""
    shared = {f.name for f in dataclasses.fields(OnlineRLSpec)}
    own = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec) if f.name not in shared}
    return trl_config(
        config_cls,
        spec,
        ctx,
        # held out: our own periodic evaluation (HeldOutReward), not TRL's
        eval_strategy="no",
        # TRL counts prompt + completion tokens itself; transformers' count finds no
        # input_ids in TRL's batches and would warn at every step
        include_num_input_tokens_seen="no",
        num_generations=spec.num_generations,
        steps_per_generation=spec.steps_per_generation,
        num_iterations=spec.num_iterations,
        beta=spec.beta,
        epsilon=spec.epsilon,
        temperature=spec.temperature,
        top_k=0,  # plain sampling at `temperature`, as PPO and the evaluation sample
        top_p=1.0,
        max_completion_length=spec.max_completion_length,
        mask_truncated_completions=spec.mask_truncated_completions,
        adam_epsilon=spec.adam_epsilon,
        # log-probs are compared across forward passes: dropout would make them disagree
        disable_dropout=True,
        # never sample PAD, as our generation does (a sampled PAD would vanish when decoded)
        generation_kwargs={"suppress_tokens": [pad_id]},
        **own,
    )


def _last_logged(trainer: Any, keys: Sequence[str]) -> dict[str, float]:
    """The last logged value of each of `keys` and of the reward's own mean, as
    `train/<key>` (TensorBoard's names for them)."""
    out: dict[str, float] = {}
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            wanted = key in keys or (key.startswith("rewards/") and key.endswith("/mean"))
            if wanted and isinstance(value, (int, float)):
                out[f"train/{key}"] = float(value)
    return out


@dataclass(frozen=True)
class OnlineAlgorithm:
    """What differs between the TRL online trainers `run_online` drives."""

    trainer_cls: type
    # (spec, ctx, pad token id) -> the TRL config
    config: Callable[[Any, RunContext, int], Any]
    # (spec, optimiser steps taken) -> generations sampled; (args) -> completions in each
    generations: Callable[[Any, int], int]
    completions_per_generation: Callable[[Any], int]
    logged: tuple[str, ...]  # TRL's logged metrics returned as train/<key> (last value)


def _refuse_zero3_reference_copy(cfg: RunConfig) -> None:
    """Under DeepSpeed ZeRO-3 TRL builds the frozen reference copy with `zero.Init`: online
    DPO's trainer refuses to (`create_reference_model`), and RLOO's and GRPO's fail on CPU
    processes (their reference's DeepSpeed config sees one process). With LoRA the reference
    is the policy with its adapters off, and no copy is built."""
    zero3 = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3"
    if not zero3 or cfg.lora.enabled or getattr(cfg.method, "beta", 0) == 0:
        return
    if cfg.method.name == "online_dpo" or not torch.cuda.is_available():
        raise UserError(
            f"method={cfg.method.name} under DeepSpeed ZeRO-3 needs lora=default (the "
            "reference is then the policy with its adapters off) or zero2.yaml: TRL's frozen "
            "reference copy does not build under ZeRO-3"
            + ("" if cfg.method.name == "online_dpo" else " on CPU processes")
        )


def run_online(cfg: RunConfig, ctx: RunContext, algorithm: OnlineAlgorithm) -> dict:
    """Train the SFT policy with `algorithm`'s TRL trainer, save it, evaluate it."""
    from rlhf_exp.rewards import get_reward, resolve_reward

    spec = cfg.method
    # None: the learned reward model (the name was checked with the config)
    reward_name = resolve_reward(spec.reward, cfg.dataset.gold_reward)
    _refuse_zero3_reference_copy(cfg)
    init = str(ctx.upstream("sft"))
    tokenizer = load_tokenizer(init, cfg.model)
    model = load_causal_lm(init, cfg.model, tokenizer=tokenizer)
    task = ctx.task(tokenizer)
    train = training_prompts(ctx, task, tokenizer, spec)
    args = algorithm.config(spec, ctx, tokenizer.pad_token_id)
    score = (
        ctx.reward_scorer(args.device)
        if reward_name is None
        else get_reward(reward_name, "method.reward")
    )
    # TRL logs it as rewards/<name>/mean: a registered name, the function of a path, or the RM
    reward = RewardFunction(score, (reward_name or "reward_model").rpartition(":")[2])

    callbacks = list(ctx.tracker.trainer_callbacks())
    if task.eval_prompts is not None and len(task.eval_prompts) > 0:
        periodic = dataclasses.replace(
            cfg.eval, num_prompts=min(spec.max_eval_samples, cfg.eval.num_prompts or 10**9)
        )
        extra = {"rm_reward": score} if reward_name is None else None

        def evaluate(policy: Any) -> dict[str, float]:
            metrics, _ = evaluate_policy(
                policy,
                tokenizer,
                task.eval_prompts,
                periodic,
                seed=cfg.seed,
                gold_reward=task.gold_reward,
                extra_scorers=extra,
            )
            return metrics

        callbacks.append(HeldOutReward(evaluate, spec.eval_steps, ctx.tracker))

    trainer = algorithm.trainer_cls(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.model, cfg.lora, "CAUSAL_LM", model=model),
        callbacks=callbacks,
    )
    trainable, total = count_parameters(trainer.model)
    log.info("%s: %d of %d parameters trainable", spec.name, trainable, total)
    result = run_training(trainer, ctx)
    save_merged(trainer.model, tokenizer, ctx.model_dir)  # before evaluating: never lost

    reference = None  # with LoRA: the adapters switched off
    if not cfg.lora.enabled:  # TRL's frozen SFT copy (none when beta=0): else load one
        reference = trainer.ref_model
        if reference is None:
            reference = load_causal_lm(init, cfg.model, tokenizer=tokenizer)
        reference = trainer.accelerator.unwrap_model(reference).eval()
    final = final_evaluation(
        ctx,
        trainer.model,
        tokenizer,
        task,
        reference=reference,
        rm_scorer=score if reward_name is None else None,
    )

    steps = trainer.state.global_step
    generations = algorithm.generations(spec, steps)
    speed = throughput(trainer, result)
    return {
        "train/loss": result.training_loss,
        "train/prompts": len(train),
        "train/generations": generations,
        # all processes
        "train/completions": generations * algorithm.completions_per_generation(args),
        **_last_logged(trainer, algorithm.logged),
        **final,
        "train/global_step": steps,
        **speed,
        # this process's generated tokens (EOS included) in this train() call
        "throughput/generated_tokens": reward.generated_tokens,
        "throughput/generated_tokens_per_s": reward.generated_tokens
        / max(speed["time/train_s"], 1e-9),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }


def _group_generations(spec: OnlineRLSpec, steps: int) -> int:
    """One generation feeds steps_per_generation x num_iterations micro-steps."""
    per_generation = spec.steps_per_generation * spec.num_iterations
    return math.ceil(steps * spec.gradient_accumulation_steps / per_generation)


def _algorithm(trainer_cls: type, config_cls: type) -> OnlineAlgorithm:
    return OnlineAlgorithm(
        trainer_cls=trainer_cls,
        config=lambda spec, ctx, pad_id: online_config(spec, ctx, config_cls, pad_id),
        generations=_group_generations,
        completions_per_generation=lambda args: args.generation_batch_size,
        logged=LAST_LOGGED,
    )


@register("rloo", needs=online_needs)
def run_rloo(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    return run_online(cfg, ctx, _algorithm(RLOO, RLOOConfig))


@register("grpo", needs=online_needs)
def run_grpo(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    return run_online(cfg, ctx, _algorithm(GRPO, GRPOConfig))
