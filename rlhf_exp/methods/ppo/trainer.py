"""The PPO loop: rollout, then `ppo_epochs` of clipped updates over shuffled minibatches.

    trainer = PPOTrainer(spec, accelerator, model, reference, tokenizer, score_fn, prompts, ...)
    metrics = trainer.train(on_step=...)   # logs every iteration, checkpoints every save_steps

`accelerator` (accelerate) places tensors, accumulates gradients over micro-batches, syncs
them across processes and averages metrics, so `accelerate launch --num_processes N` runs this
unchanged: each process samples its own prompts with its own seed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule
from tqdm.auto import tqdm
from transformers import get_scheduler
from trl.models.utils import prepare_deepspeed, prepare_fsdp

from rlhf_exp import signals
from rlhf_exp.config.ppo import PPOSpec
from rlhf_exp.distributed import any_process
from rlhf_exp.errors import Interrupted, NonFiniteError
from rlhf_exp.memory import HeapReuse, heap_reused, release_freed_memory
from rlhf_exp.methods.ppo import checkpoint, core
from rlhf_exp.methods.ppo.models import PolicyAndValue, Reference
from rlhf_exp.methods.ppo.rollout import PromptSchedule, ScoreFn, collect, longest_row
from rlhf_exp.rl import by_length, response_logprobs
from rlhf_exp.sharding import is_sharded, whole_weights
from rlhf_exp.training import fitting_micro_batch

log = logging.getLogger(__name__)

# a NaN/inf in any of these stops the run (the last checkpoint on disk stays a good one)
FINITE_KEYS = ("train/loss", "objective/scores", "objective/kl", "objective/rlhf_reward")


def _check_finite(metrics: dict[str, float], step: int) -> None:
    for key in FINITE_KEYS:
        if not math.isfinite(metrics[key]):
            raise NonFiniteError(
                f"{key} is {metrics[key]} at step {step}; stopped, the last checkpoint before "
                "it is kept"
            )


class PPOTrainer:
    def __init__(
        self,
        spec: PPOSpec,
        accelerator: Any,
        model: PolicyAndValue,
        reference: Reference,
        tokenizer: Any,
        score_fn: ScoreFn,
        prompts: list[str],
        seed: int,
        total_steps: int,
        checkpoint_dir: Any,
    ) -> None:
        self.spec, self.accelerator, self.tokenizer = spec, accelerator, tokenizer
        self.reference, self.score_fn = reference, score_fn
        self.total_steps, self.checkpoint_dir = total_steps, checkpoint_dir
        self.schedule = PromptSchedule(
            prompts,
            seed,
            spec.rollout_batch_size,
            accelerator.process_index,
            accelerator.num_processes,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        # Adam eps 1e-5 (Huang et al. 2022, detail 3): the PyTorch default 1e-8 is less stable.
        # Fused, as transformers' Trainer builds it for the TRL methods: torch's default on CPU
        # is the per-tensor loop, ~10% of a 124M update (benchmarks/NOTES.md)
        optimizer = torch.optim.AdamW(
            params,
            lr=spec.learning_rate,
            eps=spec.adam_eps,
            weight_decay=spec.weight_decay,
            fused=True,
        )
        per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
        self.minibatches = spec.rollout_batch_size // per_step
        # rows per forward: fewer than per_device_train_batch_size when the prompts are long
        longest = longest_row(tokenizer, prompts, spec, model.policy)
        micro = self.micro_rows = fitting_micro_batch(spec, longest, str(longest))
        accelerator.gradient_accumulation_steps = per_step // micro
        updates = total_steps * spec.ppo_epochs * self.minibatches
        # stepped by hand once per optimiser step (a prepared scheduler would step once per
        # process per call), so its state is the same on every process and in a checkpoint
        self.scheduler = get_scheduler(
            spec.lr_scheduler_type,
            optimizer,
            num_warmup_steps=math.ceil(spec.warmup_ratio * updates),
            num_training_steps=updates,
        )
        deepspeed = accelerator.state.deepspeed_plugin
        if deepspeed is not None:  # what a TRL trainer's arguments set; ours are the spec
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = micro
            deepspeed.deepspeed_config["gradient_clipping"] = spec.max_grad_norm
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        # the frozen reference sharded as the policy is, with TRL's helpers for its own refs
        # (ZeRO-3 splits it, stages 1-2 keep it whole). DeepSpeed: forwards still call the
        # module (the engine's `training` flag stays True through eval(), and code that
        # restores a mode from it would turn dropout on)
        self.reference_engine = None
        if reference.frozen is not None and deepspeed is not None:
            self.reference_engine = prepare_deepspeed(reference.frozen, accelerator)
        elif reference.frozen is not None and is_sharded(self.model):
            reference.frozen = prepare_fsdp(reference.frozen, accelerator)
        self._first_forward_through_root()
        if spec.adaptive_kl:
            self.kl_ctl = core.AdaptiveKLController(spec.kl_coef, spec.kl_target, spec.kl_horizon)
        else:
            self.kl_ctl = core.FixedKLController(spec.kl_coef)
        self.step = 0
        self.last_metrics: dict[str, float] = {}  # of the latest iteration (checkpointed)
        self.curve: list[dict[str, Any]] = []  # the periodic evaluations so far (checkpointed)

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    def whole_weights(self) -> contextlib.AbstractContextManager:
        """The policy, critic and reference whole on every rank (collective when sharded): the
        rollout and the evaluations call their submodules directly."""
        return whole_weights(self.model, self.reference_engine or self.reference.frozen)

    def _first_forward_through_root(self) -> None:
        """FSDP makes the module that runs forward first its root; the rollout calls the
        policy's submodules first, so under FSDP two tokens go through the root now."""
        if not isinstance(self.model, FSDPModule):
            return
        ids = torch.zeros((1, 2), dtype=torch.long, device=self.accelerator.device)
        with torch.no_grad():
            self.model(ids, torch.ones_like(ids), 1)
            if self.reference.frozen is not None:
                self.reference.frozen(input_ids=ids)
        for model in (self.model, self.reference.frozen):
            if model is not None:
                model.reshard()  # a root keeps its weights whole after forward

    # ----------------------------------------------------------------------------- state
    def save(self) -> None:
        state = {
            "kl_ctl": self.kl_ctl.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            # the last iteration's metrics: a run resumed after its last step reports them
            "metrics": self.last_metrics,
            "curve": self.curve,
        }
        checkpoint.save(
            self.checkpoint_dir,
            self.step,
            self.unwrapped,
            self.optimizer.optimizer,
            state,
            self.accelerator,
            self.spec.save_total_limit,
        )

    def resume(self, path: Any) -> None:
        state = checkpoint.load(path, self.unwrapped, self.optimizer.optimizer, self.accelerator)
        self.step = int(state["step"])
        self.kl_ctl.load_state_dict(state["kl_ctl"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.last_metrics = dict(state.get("metrics", {}))
        self.curve = list(state.get("curve", []))
        log.info("ppo: resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------ loop
    def train(self, on_step: Callable[[int, dict[str, float]], None]) -> dict[str, float]:
        """Run iterations up to `total_steps`; `on_step(step, metrics)` sees each one.

        Runs in the `training` phase (`rlhf_exp.signals`): SIGINT/SIGTERM finish the current
        iteration, checkpoint it and raise `Interrupted` (a second signal stops at once);
        a non-finite loss, reward or KL raises `NonFiniteError` before that step is saved.
        """
        metrics = self.last_metrics
        # this session's totals (a resumed run counts from its resume point): benchmarks
        # read throughput from them rather than from one iteration
        totals = {
            "time/rollout_total_s": 0.0,
            "time/update_total_s": 0.0,
            "throughput/tokens_total": 0.0,
            "throughput/sequence_tokens_total": 0.0,
        }
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc="ppo",
            disable=not self.accelerator.is_main_process,
        )
        with signals.phase("training", deferred=True):
            while self.step < self.total_steps:
                metrics = self.last_metrics = self.iteration()
                for key, name in (
                    ("time/rollout_total_s", "time/rollout_s"),
                    ("time/update_total_s", "time/update_s"),
                    ("throughput/tokens_total", "throughput/tokens"),
                    ("throughput/sequence_tokens_total", "throughput/sequence_tokens"),
                ):
                    totals[key] += metrics[name]
                self.step += 1
                _check_finite(metrics, self.step)
                bar.update(1)
                bar.set_postfix(
                    score=f"{metrics['objective/scores']:.3f}",
                    kl=f"{metrics['objective/kl']:.3f}",
                )
                on_step(self.step, metrics)
                stop = any_process(signals.stop_requested())
                if stop or self.step % self.spec.save_steps == 0 or self.step == self.total_steps:
                    self.save()
                if stop:
                    bar.close()
                    raise Interrupted(Path(self.checkpoint_dir).parent, self.step)
            if any_process(signals.stop_requested()):  # came while the last step was saved
                raise Interrupted(Path(self.checkpoint_dir).parent, self.step)
        signals.rename_phase("evaluation")  # what follows training: saving and evaluating
        bar.close()
        seconds = totals["time/rollout_total_s"] + totals["time/update_total_s"]
        totals["throughput/tokens_per_s_total"] = totals["throughput/tokens_total"] / max(
            seconds, 1e-9
        )
        return metrics | totals

    def iteration(self) -> dict[str, float]:
        spec, acc = self.spec, self.accelerator
        t0 = time.perf_counter()
        # the rollout's log-probs must come from the same precision as the update's forward
        # (the prepared model autocasts under model.precision; the unwrapped one does not)
        with acc.autocast(), self.whole_weights():
            batch, seq_stats = collect(
                self.unwrapped,
                self.reference,
                self.tokenizer,
                self.schedule(self.step),
                self.score_fn,
                spec,
                self.kl_ctl.value,
                acc.device,
                self.micro_rows,
            )
        release_freed_memory()  # generation's caches, before the update's activations
        t1 = time.perf_counter()
        with heap_reused() as heap:  # each step frees and allocates the same large tensors
            update_stats = self.update(batch, heap)
        t2 = time.perf_counter()

        # one all-reduce for every metric: per-process means, averaged over processes
        local = {k: v.float().mean() for k, v in seq_stats.items()} | update_stats
        local["throughput/response_tokens"] = batch.mask.sum()
        local["throughput/sequence_tokens"] = batch.attention_mask.sum()  # prompt + response
        keys = sorted(local)
        reduced = acc.reduce(torch.stack([local[k].detach().float() for k in keys]), "mean")
        metrics = dict(zip(keys, reduced.tolist(), strict=True))
        tokens = metrics.pop("throughput/response_tokens") * acc.num_processes
        sequence_tokens = metrics.pop("throughput/sequence_tokens") * acc.num_processes
        metrics |= {
            "objective/kl_coef": self.kl_ctl.value,
            "train/learning_rate": self.scheduler.get_last_lr()[0],
            "time/rollout_s": t1 - t0,
            "time/update_s": t2 - t1,
            "throughput/tokens": tokens,  # generated, EOS included, over all processes
            "throughput/sequence_tokens": sequence_tokens,
            "throughput/tokens_per_s": tokens / (t2 - t0),
            "train/loss": metrics["policy/pg_loss"] + spec.vf_coef * metrics["val/vf_loss"],
            "train/kl": metrics["objective/kl"],
        }
        # beta follows the KL of the rollout just taken (Ziegler et al. 2019, sec. 2.2)
        self.kl_ctl.update(metrics["objective/kl"], spec.rollout_batch_size * acc.num_processes)
        return metrics

    def update(self, batch, heap: HeapReuse | None = None) -> dict[str, torch.Tensor]:
        """`ppo_epochs` passes over shuffled minibatches; the stats are token means over each
        minibatch, averaged over the minibatches. `heap` hears of each optimiser step."""
        spec, acc = self.spec, self.accelerator
        B, per_step = batch.mask.shape[0], self.micro_rows * acc.gradient_accumulation_steps
        n_response = batch.response_ids.shape[1]
        pad_id = self.tokenizer.pad_token_id
        sums: dict[str, torch.Tensor] = {}
        count = 0
        first: dict[str, torch.Tensor] = {}
        for epoch in range(spec.ppo_epochs):
            # a fresh shuffle each epoch (torch global RNG: per process, checkpointed)
            order = torch.randperm(B).to(batch.mask.device)
            for mb_start in range(0, B, per_step):
                mb_first = epoch == 0 and mb_start == 0
                rows = order[mb_start : mb_start + per_step]
                tokens = batch.mask[rows].sum().clamp(min=1)
                # the minibatch's rows by length: its micro-batches pad to their own longest
                for idx, first_column in by_length(
                    batch.attention_mask[rows], n_response, self.micro_rows
                ):
                    mb = batch.select(rows[idx], first_column)
                    # the loss is the minibatch's token mean however it is split: accelerate
                    # (or DeepSpeed) divides by the micro-batches, the share weighs by tokens
                    share = mb.mask.sum() / tokens
                    with acc.accumulate(self.model):
                        logits, values = self.model(mb.input_ids, mb.attention_mask, n_response)
                        logprobs = response_logprobs(
                            logits, mb.response_ids, spec.temperature, pad_id
                        )  # (b, R)
                        pg_loss, pg = core.policy_loss(
                            logprobs, mb.logprobs, mb.advantages, mb.mask, spec.cliprange
                        )
                        vf_loss, vf_clipfrac = core.value_loss(
                            values, mb.values, mb.returns, mb.mask, spec.cliprange_value
                        )
                        loss = pg_loss + spec.vf_coef * vf_loss
                        acc.backward(loss * share * acc.gradient_accumulation_steps)
                        if acc.sync_gradients:
                            acc.clip_grad_norm_(self.model.parameters(), spec.max_grad_norm)
                        self.optimizer.step()
                        if acc.sync_gradients:
                            self.scheduler.step()
                        self.optimizer.zero_grad()
                    if acc.sync_gradients and heap is not None:
                        heap.step_done()
                    stats = {
                        "policy/pg_loss": pg_loss.detach(),
                        "policy/approxkl": pg.approxkl,
                        "policy/clipfrac": pg.clipfrac,
                        "policy/ratio_mean": pg.ratio_mean,
                        "val/vf_loss": vf_loss.detach(),
                        "val/clipfrac": vf_clipfrac,
                    }
                    if mb_first:
                        # before any optimiser step the recomputed log-probs must equal the
                        # rollout's: ratio 1, approx KL 0, no clipping (a bug detector)
                        checks = {
                            "check/first_ratio_max_dev": pg.ratio_max_dev,
                            "check/first_approxkl": pg.approxkl,
                            "check/first_clipfrac": pg.clipfrac,
                        }
                        for k, v in checks.items():  # worst over the minibatch's micro-batches
                            first[k] = torch.maximum(first.get(k, v), v)
                    for k, v in stats.items():  # token means over the minibatch
                        sums[k] = sums.get(k, 0) + v * share
                count += 1
        return {k: v / count for k, v in sums.items()} | first
