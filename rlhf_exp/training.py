"""Pieces every trainer-backed method shares: TRL arguments from a `TrainSpec`, and the
guarded `run_training` (clean stop on signals, NaN check, resume from complete checkpoints)."""

from __future__ import annotations

import logging
import math
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from transformers import TrainerCallback

from rlhf_exp.errors import Interrupted, NonFiniteError, UserError

if TYPE_CHECKING:
    from rlhf_exp.config.schema import TrainSpec
    from rlhf_exp.context import RunContext

log = logging.getLogger(__name__)
T = TypeVar("T")


def trainer_args(spec: TrainSpec, ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments for a TRL `*Config`, with CPU-sane values set explicitly.

    TRL defaults `bf16=True` and gradient checkpointing on. Checkpointing only recomputes
    activations that fit easily for small models, so it is off; bf16 follows
    `model.precision` (settled for this machine if `auto`; benchmarks/NOTES.md: what bf16 gains).
    """
    return {
        "output_dir": str(ctx.checkpoint_dir),
        "seed": ctx.run.seed,
        "data_seed": ctx.run.seed,
        "learning_rate": spec.learning_rate,
        "num_train_epochs": spec.num_train_epochs,
        "max_steps": spec.max_steps,
        "per_device_train_batch_size": spec.per_device_train_batch_size,
        "per_device_eval_batch_size": spec.per_device_eval_batch_size,
        "gradient_accumulation_steps": spec.gradient_accumulation_steps,
        "lr_scheduler_type": spec.lr_scheduler_type,
        "warmup_steps": spec.warmup_ratio,  # a float < 1 is a ratio of total steps
        "weight_decay": spec.weight_decay,
        "max_grad_norm": spec.max_grad_norm,
        "logging_steps": spec.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": spec.eval_steps,
        "save_strategy": "steps",
        "save_steps": spec.save_steps,
        "save_total_limit": 2,  # the newest may be cut short by SIGKILL; keep the one before
        "report_to": "none",  # the run's Tracker adds its own TensorBoard callback
        "bf16": ctx.run.model.precision == "bf16",
        "fp16": False,
        "gradient_checkpointing": False,
        "disable_tqdm": False,
        "train_sampling_strategy": "group_by_length" if spec.group_by_length else "random",
        "torch_compile": spec.torch_compile,
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,  # no accelerator to pin for on CPU; avoids a warning
        # real (unpadded) tokens per step, for `throughput`; costs one small all-reduce a step
        "include_num_input_tokens_seen": "non_padding",
        # Without a GPU: otherwise processes started by `accelerate launch` each train alone
        # on the full data instead of as ranks of one (gloo) group.
        "use_cpu": not torch.cuda.is_available(),
    }


def trl_config(config_cls: type[T], spec: TrainSpec, ctx: RunContext, **own: Any) -> T:
    """A TRL `*Config`: the shared arguments (`trainer_args`), the method's own knobs, then
    `method.trainer_kwargs`, any further option of that config, so the user's word is last.

    Unknown keys were refused before anything loaded (config.schema); a value TRL rejects is
    one line naming `method.trainer_kwargs`.
    """
    kwargs = {**trainer_args(spec, ctx), **own, **spec.trainer_kwargs}
    if not spec.trainer_kwargs:
        return config_cls(**kwargs)
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"method.trainer_kwargs={spec.trainer_kwargs} rejected by {config_cls.__name__}: "
            f"{first}"
        ) from None


def throughput(trainer: Any, result: Any) -> dict[str, float]:
    """Speed of the training loop of this `train()` call (a resumed run: since its resume).

    Tokens are the unpadded tokens the model was fed (for pairs, chosen and rejected both);
    the loop time excludes setup such as tokenising or precomputing reference log-probs.
    """
    seconds = result.metrics["train_runtime"]
    tokens = trainer.state.num_input_tokens_seen - getattr(
        trainer, "_initial_num_input_tokens_seen", 0
    )
    return {
        "time/train_s": round(seconds, 2),
        "throughput/samples_per_s": result.metrics["train_samples_per_second"],
        "throughput/tokens_total": tokens,
        "throughput/tokens_per_s": tokens / max(seconds, 1e-9),
    }


def eval_subset(dataset: Any, spec: TrainSpec) -> Any:
    """The first `spec.max_eval_samples` rows: evaluation during training stays cheap."""
    return dataset.select(range(min(len(dataset), spec.max_eval_samples)))


# Written into a trainer checkpoint dir once transformers has finished saving it: a
# checkpoint without it was cut short (SIGKILL mid-save) and is never resumed from.
CHECKPOINT_COMPLETE = "COMPLETE"


class TrainingGuard(TrainerCallback):
    """Stops cleanly on SIGINT/SIGTERM and refuses to go on after a non-finite loss.

    A signal lets the current step finish, then saves a checkpoint and ends training (a second
    signal interrupts at once). A NaN/inf loss raises `NonFiniteError` at the log where it
    appears, before any save of that step, so the last checkpoint on disk stays a good one.
    """

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.stop_signal is not None:  # second signal: the user means it
            raise KeyboardInterrupt
        self.stop_signal = signum
        log.warning(
            "%s received: finishing this step and saving a checkpoint", signal.Signals(signum).name
        )

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stop_signal is not None:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        # A NaN/inf loss makes its gradients non-finite: stop before the optimiser writes them
        # into the weights and before any checkpoint of this step (the loss itself is only
        # seen at the next log, possibly after a save).
        grads = [p.grad for p in kw["model"].parameters() if p.grad is not None]
        if grads and not torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            raise NonFiniteError(
                f"train/loss gradient is not finite at step {state.global_step + 1}; stopped, "
                "the last checkpoint before it is kept"
            )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any
    ) -> None:
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteError(
                    f"train/{key} is {value} at step {state.global_step}; stopped, the last "
                    f"checkpoint before it is kept"
                )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            (checkpoint / CHECKPOINT_COMPLETE).write_text(f"{state.global_step}\n")


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The newest trainer checkpoint under `checkpoint_dir` that was saved completely."""
    done = [
        p for p in Path(checkpoint_dir).glob("checkpoint-*") if (p / CHECKPOINT_COMPLETE).is_file()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def has_complete_checkpoint(checkpoint_dir: Path) -> bool:
    """Whether any method (trainer `checkpoint-N`, PPO `step-N`) left a complete checkpoint."""
    return any(p.is_file() for p in Path(checkpoint_dir).glob(f"*/{CHECKPOINT_COMPLETE}"))


def resume_checkpoint(ctx: RunContext) -> Path | None:
    """The checkpoint `resume_from` names: None (fresh), `latest` in this run dir, or a path."""
    choice = ctx.run.resume_from
    if choice is None:
        return None
    path = latest_checkpoint(ctx.checkpoint_dir) if choice == "latest" else Path(choice)
    if path is None or not (path / CHECKPOINT_COMPLETE).is_file():
        where = ctx.checkpoint_dir if choice == "latest" else choice
        raise UserError(f"resume_from={choice!r}: no complete checkpoint at {where}")
    return path


# Token-id columns TRL 1.x's trainers feed the model (SFT: input_ids; reward: chosen/rejected
# with the prompt inside; DPO: prompt_ids apart). A row costs its prompt plus its longest.
_SEQUENCE_COLUMNS = ("input_ids", "chosen_ids", "rejected_ids")


def with_lengths(dataset: Any) -> Any:
    """`dataset` with the `length` column transformers' length-grouped sampler reads.

    Without it the sampler looks for `input_ids`, which preference rows do not have.
    """
    if "length" in dataset.column_names:
        return dataset
    columns = [c for c in _SEQUENCE_COLUMNS if c in dataset.column_names]
    if not columns:
        raise UserError(
            f"group_by_length: no token-id column among {dataset.column_names}; "
            f"expected one of {', '.join(_SEQUENCE_COLUMNS)}"
        )
    prompt = "prompt_ids" in dataset.column_names

    def length(row: dict[str, Any]) -> dict[str, int]:
        longest = max(len(row[c]) for c in columns)
        return {"length": longest + (len(row["prompt_ids"]) if prompt else 0)}

    return dataset.map(length, desc="measuring lengths for group_by_length")


def feed_lengths(trainer: Any) -> None:
    """Give a trainer's length-grouped samplers (train and eval) the `length` column.

    Trainers drop the columns their model does not take before building the sampler, so
    `length` joins the kept columns (TRL's collators pick their own keys and ignore it).
    """
    trainer.train_dataset = with_lengths(trainer.train_dataset)
    if isinstance(trainer.eval_dataset, dict):
        trainer.eval_dataset = {k: with_lengths(v) for k, v in trainer.eval_dataset.items()}
    elif trainer.eval_dataset is not None:
        trainer.eval_dataset = with_lengths(trainer.eval_dataset)
    if trainer.args.remove_unused_columns:
        trainer._set_signature_columns_if_needed()
        if "length" not in trainer._signature_columns:
            trainer._signature_columns = [*trainer._signature_columns, "length"]


def run_training(trainer: Any, ctx: RunContext) -> Any:
    """`trainer.train()` under a `TrainingGuard`, resuming when `resume_from` says so.

    Raises `Interrupted` (after the checkpoint is written) when a signal stopped training.
    """
    guard = TrainingGuard()
    trainer.add_callback(guard)
    if trainer.args.train_sampling_strategy == "group_by_length":
        feed_lengths(trainer)
    start = resume_checkpoint(ctx)
    if start is not None:
        log.info("resuming from %s", start)
    with guard.handling_signals():
        result = trainer.train(resume_from_checkpoint=str(start) if start else None)
    if guard.stop_signal is not None:
        raise Interrupted(ctx.run_dir, trainer.state.global_step)
    return result


def final_eval_metrics(trainer: Any) -> dict[str, float]:
    """The trained policy's held-out trainer metrics (`eval_loss`, `eval_rewards/*`, ...).

    transformers already evaluates at the last step of a step-based schedule; reuse that
    and evaluate again only if it did not happen.
    """
    step = trainer.state.global_step
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == step else trainer.evaluate()
    return trainer.evaluate()


def reference_policy(trainer: Any, run: Any, init: str) -> Any | None:
    """The SFT policy a reference-based trainer (DPO, KTO) is evaluated against: None under
    LoRA (its adapters are switched off instead), else the trainer's frozen copy, or one
    loaded from `init` now if the reference log-probs were precomputed."""
    from rlhf_exp.models import load_causal_lm

    if run.lora.enabled:
        return None
    if trainer.ref_model is not None:
        return trainer.ref_model
    return load_causal_lm(init, run.model, tokenizer=trainer.processing_class).eval()
