"""PPO: our own actor-critic RLHF trainer (TRL 1.16 has none), after Ziegler et al. 2019 and
the details of Huang et al. 2024 ("The N+ implementation details of RLHF with PPO").

    python run.py method=ppo                        # vs the learned reward model (cached)
    python run.py method=ppo method.reward=gold     # PPO-GT: vs the dataset's gold reward
    python run.py method=ppo lora=default           # LoRA policy; reference = adapters off
    accelerate launch --multi_gpu --num_processes 2 run.py method=ppo hydra.run.dir=outputs/ddp
    accelerate launch --config_file rlhf_exp/accelerate_configs/zero3.yaml run.py method=ppo

The policy starts from the SFT policy (`upstream.sft`); the reward model (`upstream.reward`)
is only resolved, and trained on a cache miss, when the run uses it (`method.reward=model`,
or the critic starts from it). Layout: `core.py` the math, `models.py` policy/critic/reference,
`rollout.py` experience, `trainer.py` the loop, `checkpoint.py` save/resume.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import TYPE_CHECKING, Any

import torch

from rlhf_exp.config.ppo import PPOSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.errors import UserError
from rlhf_exp.methods import register

if TYPE_CHECKING:
    from accelerate import Accelerator

log = logging.getLogger(__name__)

# A periodic evaluation's point of the run's curve (`trainer.curve`, checkpointed, so a resumed
# run keeps the points before its checkpoint): metrics.json gets them as `curve/*` lists.
CURVE_KEYS = {"kl": "eval/kl", "gold": "eval/gold_reward", "proxy": "eval/rm_reward"}


def build_accelerator(spec: PPOSpec, precision: str) -> Accelerator:
    """PPO's accelerator: one optimiser step per `gradient_accumulation_steps` micro-batches,
    counted by the micro-batches alone."""
    from accelerate import Accelerator
    from accelerate.utils import (
        GradientAccumulationPlugin,
        InitProcessGroupKwargs,
        parse_flag_from_env,
    )

    # cpu=True without a GPU: otherwise accelerate treats every launched process as a lone
    # single-process run (DistributedType.NO) instead of one rank of a gloo group. DeepSpeed
    # runs on CPUs with a backend of its own, which cpu=True would switch off: gloo by name
    no_gpu = not torch.cuda.is_available()
    deepspeed_on_cpu = no_gpu and parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    # Not synced with a dataloader: the minibatches are not one, and accelerate's gradient
    # state is process-wide. A dataloader that an earlier stage or sweep job stopped iterating
    # at its last batch (measured after DPO) stays the active one until garbage collection,
    # and would otherwise make every micro-batch an optimiser step
    accumulation = GradientAccumulationPlugin(
        num_steps=spec.gradient_accumulation_steps, sync_with_dataloader=False
    )
    return Accelerator(
        gradient_accumulation_plugin=accumulation,
        cpu=no_gpu and not deepspeed_on_cpu,
        mixed_precision="bf16" if precision == "bf16" else "no",
        kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None,
    )


def _reward_name(spec: PPOSpec, cfg: RunConfig) -> str | None:
    """The reward function's name or import path, or None for the learned reward model."""
    from rlhf_exp.rewards import resolve_reward

    return resolve_reward(spec.reward, cfg.dataset.gold_reward)


def _critic_from_rm(spec: PPOSpec) -> bool:
    """Whether the separate critic starts from the reward model (see `critic_init`)."""
    auto = spec.critic_init == "auto" and spec.reward == "model"
    return spec.critic == "model" and (spec.critic_init == "reward" or auto)


def _needs(run: RunConfig) -> tuple[str, ...]:
    """The reward model only when PPO optimises it, its critic starts from it, or the
    evaluation scores with it: reward-function runs otherwise never train one."""
    spec: PPOSpec = run.method  # type: ignore[assignment]
    uses_rm = spec.reward == "model" or _critic_from_rm(spec) or run.eval.reward_model
    return ("sft", "reward") if uses_rm else ("sft",)


@register("ppo", needs=_needs)
def run(cfg: RunConfig, ctx: Any) -> dict[str, Any]:
    from accelerate.utils import broadcast_object_list
    from transformers import set_seed

    from rlhf_exp.evaluation import evaluate_policy, final_evaluation
    from rlhf_exp.methods.ppo import checkpoint
    from rlhf_exp.methods.ppo.models import PolicyAndValue, Reference, hidden_size, score_head
    from rlhf_exp.methods.ppo.trainer import PPOTrainer
    from rlhf_exp.models import (
        apply_lora,
        count_parameters,
        enable_gradient_checkpointing,
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        save_merged,
    )
    from rlhf_exp.rewards import get_reward

    spec: PPOSpec = cfg.method  # type: ignore[assignment]
    reward_fn_name = _reward_name(spec, cfg)  # config errors before anything loads
    critic_from_rm = _critic_from_rm(spec)
    needs_rm = reward_fn_name is None or critic_from_rm
    resume = checkpoint.resolve(cfg.resume_from, ctx.checkpoint_dir) if cfg.resume_from else None

    accelerator = build_accelerator(spec, cfg.model.precision)
    main = accelerator.is_main_process

    sft_dir = str(ctx.upstream("sft"))
    rm_dir = str(ctx.upstream("reward")) if needs_rm else None
    tokenizer = load_tokenizer(sft_dir, cfg.model)
    task = ctx.task(tokenizer)
    source = task.sft_train if task.sft_train is not None else task.pref_train
    if source is None or len(source) == 0:
        raise UserError(f"dataset {cfg.dataset.name!r} has no prompts to train PPO on")
    prompts = list(dict.fromkeys(source["prompt"]))  # unique, in a stable order

    policy = load_causal_lm(sft_dir, cfg.model, tokenizer=tokenizer)
    # frozen copy unless LoRA
    reference = Reference(policy, lora=cfg.lora.enabled).to(accelerator.device)
    policy = apply_lora(policy, cfg.model, cfg.lora, "CAUSAL_LM")
    critic = None
    if spec.critic == "model":
        critic = load_reward_model(rm_dir if critic_from_rm else sft_dir, cfg.model, tokenizer)
        if not critic_from_rm:  # a fresh head: V = 0 until the critic learns
            torch.nn.init.zeros_(score_head(critic).weight)
    if reward_fn_name is None:
        score_fn = ctx.reward_scorer(accelerator.device)
    else:
        score_fn = get_reward(reward_fn_name, "method.reward")
    model = PolicyAndValue(policy, critic, hidden_size(policy)).eval()  # dropout off for good
    if resume is not None:  # before prepare(): sharding and ZeRO's fp32 copy start from them
        checkpoint.load_weights(resume, model)
    if cfg.model.gradient_checkpointing:  # policy and critic (the reference never trains)
        enable_gradient_checkpointing(model)
    trainable, total = count_parameters(model)
    log.info("ppo: %d of %d parameters trainable (policy + critic)", trainable, total)

    total_steps = spec.max_steps
    if total_steps < 0:  # num_train_epochs passes over the prompts
        per_step = spec.rollout_batch_size * accelerator.num_processes
        total_steps = math.ceil(spec.num_train_epochs * len(prompts) / per_step)
    set_seed(cfg.seed + accelerator.process_index)  # each process samples its own responses
    trainer = PPOTrainer(
        spec,
        accelerator,
        model,
        reference,
        tokenizer,
        score_fn,
        prompts,
        cfg.seed,
        total_steps,
        ctx.checkpoint_dir,
    )
    if resume is not None:
        trainer.resume(resume)

    extra = {"rm_reward": score_fn} if reward_fn_name is None else None

    def evaluate(policy_model: Any, prefix: str, eval_spec: Any) -> dict[str, float]:
        scores, _ = evaluate_policy(
            policy_model,
            tokenizer,
            task.eval_prompts,
            eval_spec,
            seed=cfg.seed,
            gold_reward=task.gold_reward,
            extra_scorers=extra,
            prefix=prefix,
            kl_reference=reference.model(policy_model),
        )
        return scores

    periodic_eval = dataclasses.replace(
        cfg.eval, num_prompts=min(spec.max_eval_samples, cfg.eval.num_prompts or 10**9)
    )

    def periodic(step: int) -> dict[str, float]:
        """Held-out gold, RM score and KL to the reference: one point of the run's curve."""
        scores = evaluate(trainer.unwrapped.policy, "eval", periodic_eval)
        point = {k: scores.get(key) for k, key in CURVE_KEYS.items()}
        if "eval/gold_reward_std" in scores:  # standard error of the mean over the prompts
            prompts = min(len(task.eval_prompts), periodic_eval.num_prompts)
            point["gold_se"] = scores["eval/gold_reward_std"] / math.sqrt(prompts)
        trainer.curve.append({"step": step, **point})
        return scores

    # evaluations run on the main process, on weights every rank gathers (when sharded)
    if trainer.step == 0 and task.eval_prompts is not None:
        with trainer.whole_weights():
            if main:
                ctx.tracker.log_scalars(periodic(0), 0)  # the SFT policy: the curve's KL=0 point

    def on_step(step: int, metrics: dict[str, float]) -> None:
        if step % spec.eval_steps == 0 and task.eval_prompts is not None:
            with trainer.whole_weights():
                if main:
                    metrics = metrics | periodic(step)
        if not main:
            return
        ctx.tracker.log_scalars(metrics, step)
        if step % spec.logging_steps == 0:
            log.info(
                "ppo step %d: score %.3f kl %.3f rlhf_reward %.3f vf_loss %.4f",
                step,
                metrics["objective/scores"],
                metrics["objective/kl"],
                metrics["objective/rlhf_reward"],
                metrics["val/vf_loss"],
            )

    started = time.perf_counter()
    last = trainer.train(on_step)
    train_s = time.perf_counter() - started

    final: dict[str, Any] = {}
    policy = trainer.unwrapped.policy
    # Saved first: a failing evaluation never loses the trained policy. Every rank calls it
    # (when sharded each gathers its slices); the main process writes.
    save_merged(policy, tokenizer, ctx.model_dir)
    with trainer.whole_weights():
        if main:
            final = final_evaluation(
                ctx,
                policy,
                tokenizer,
                task,
                reference=None if cfg.lora.enabled else reference.frozen,
                rm_scorer=score_fn if reward_fn_name is None else None,
            )
    final = broadcast_object_list([final])[0]  # every process returns the same metrics
    accelerator.wait_for_everyone()
    rm_used = ctx.upstream_metrics("reward")  # which RM, its held-out accuracy
    return {
        **last,
        **final,
        **_curve_metrics(trainer.curve),
        **{f"upstream/reward/{k}": v for k, v in rm_used.items()},
        "train/global_step": trainer.step,
        "time/train_s": round(train_s, 2),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }


def _curve_metrics(curve: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """`curve/step`, `curve/kl`, `curve/gold` (+ `curve/gold_se`), `curve/proxy` (the RM
    score) as lists, one entry per periodic evaluation (step 0: the SFT policy); a quantity
    not measured (no gold reward, no reward model) is left out."""
    out: dict[str, list[Any]] = {"curve/step": [p["step"] for p in curve]} if curve else {}
    for name in (*CURVE_KEYS, "gold_se"):
        values = [p.get(name) for p in curve]
        if curve and all(v is not None for v in values):
            out[f"curve/{name}"] = values
    return out
