"""Pieces every trainer-backed method shares: TRL arguments from a `TrainSpec`, and the
guarded `run_training` (clean stop on signals, NaN check, resume from complete checkpoints)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow.compute as pc
import torch
from transformers import TrainerCallback, TrainingArguments
from transformers.trainer_callback import ProgressCallback

from rlhf_exp import signals
from rlhf_exp.config import model_files
from rlhf_exp.distributed import any_process, world_size
from rlhf_exp.errors import ConfigError, Interrupted, NonFiniteError, UserError
from rlhf_exp.generation import one_draw_per_row_by_race
from rlhf_exp.lm_head import install_cpu_lm_head
from rlhf_exp.memory import release_freed_memory

if TYPE_CHECKING:
    from rlhf_exp.config.schema import TrainSpec
    from rlhf_exp.context import RunContext

log = logging.getLogger(__name__)
T = TypeVar("T")

# transformers 5 renamed `gradient_checkpointing` and warns (FutureWarning) in every run that
# sets the old name, which TRL's configs default to True; model.gradient_checkpointing sets it.
_CHECKPOINTING = next(
    name
    for name in ("activation_checkpointing", "gradient_checkpointing")
    if name in {f.name for f in dataclasses.fields(TrainingArguments)}
)


def trainer_args(spec: TrainSpec, ctx: RunContext) -> dict[str, Any]:
    """Keyword arguments for a TRL `*Config`, with CPU-sane values set explicitly.

    TRL defaults `bf16=True` and gradient checkpointing on. Checkpointing only recomputes
    activations that fit easily for small models, so it follows `model.gradient_checkpointing`
    (off by default); bf16 follows `model.precision` (settled for this machine if `auto`;
    benchmarks/NOTES.md: what bf16 gains).
    """
    _warn_if_all_warmup(spec)
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
        # (transformers 5 checkpoints non-reentrantly: fine with LoRA's frozen embeddings)
        _CHECKPOINTING: ctx.run.model.gradient_checkpointing,
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


def _warn_if_all_warmup(spec: TrainSpec) -> None:
    """transformers' warmup is ceil(ratio x steps) steps from learning rate 0: a run that
    short is all warmup, and one of a single step does not train at all."""
    if spec.max_steps <= 0 or spec.warmup_ratio <= 0:
        return
    warmup = math.ceil(spec.warmup_ratio * spec.max_steps)
    if warmup >= spec.max_steps:
        log.warning(
            "method.warmup_ratio=%g makes all %d steps warmup, which starts from learning rate "
            "0: this run trains %s; set method.warmup_ratio=0 for runs this short",
            spec.warmup_ratio,
            spec.max_steps,
            "nothing" if spec.max_steps == 1 else "less than asked",
        )


def trl_config(config_cls: type[T], spec: TrainSpec, ctx: RunContext, **own: Any) -> T:
    """A TRL `*Config`: the shared arguments (`trainer_args`), the method's own knobs, then
    `method.trainer_kwargs`, any further option of that config.

    Unknown keys, and keys a knob sets (`max_steps`, `seed`, ...) or rlhf-exp fixes
    (`output_dir`, ...), were refused before anything loaded (config.schema), so trainer_kwargs
    only add what no knob reaches; a value TRL rejects is one line naming
    `method.trainer_kwargs`.
    """
    # Every TRL trainer is configured here first, so its fused LM head is set before it runs
    install_cpu_lm_head()
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


def longest_sequence(rows: Any, max_length: int) -> int:
    """Tokens of the longest sequence a trainer can build from tokenised `rows`: a sequence
    column, after the longest `prompt_ids` where the trainer joins one (an upper bound that
    also covers KTO's KL rows, which join one row's prompt to another's completion), at most
    `max_length`."""
    columns = [c for c in _SEQUENCE_COLUMNS if c in rows.column_names]
    if not columns:
        raise ValueError(
            f"no token-id column among {rows.column_names}; expected one of "
            f"{', '.join(_SEQUENCE_COLUMNS)}"
        )
    longest = max(max(_longest_list(rows, c) for c in columns), 1)
    if "prompt_ids" in rows.column_names:
        longest += _longest_list(rows, "prompt_ids")
    return min(longest, max_length)


def _longest_list(rows: Any, column: str) -> int:
    """Length of the longest token-id list in `column`, read from Arrow: a training split's
    ids never become Python lists (millions of ints on real data)."""
    lengths = pc.list_value_length(rows.with_format("arrow")[column])
    return pc.max(lengths).as_py() or 0


def micro_batches(rows: Any, spec: TrainSpec, sequences_per_row: int) -> dict[str, int]:
    """TRL's `per_device_train_batch_size` and `gradient_accumulation_steps`: the spec's, or the
    same rows per optimiser step in more, smaller micro-batches when one of the longest training
    `rows` (`sequences_per_row` sequences each, in one forward) would pad a micro-batch past
    `train_batch_tokens` tokens. The step trains on the same rows with the same loss and
    gradient either way (the trainers average over the step's rows or tokens; dropout, where a
    method keeps it, draws masks for other shapes); only the activations held at once shrink.

    SFT's 32 rows that suit short rows are 16k tokens at 512-token dialogues; at 124M, 4
    micro-batches of 8 trained 1.19x faster than one of 32, at 0.93x its peak memory
    (benchmarks/NOTES.md).
    """
    per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    longest = longest_sequence(rows, spec.max_length)
    micro = fitting_micro_batch(
        spec, sequences_per_row * longest, f"{sequences_per_row} x {longest}"
    )
    return {"per_device_train_batch_size": micro, "gradient_accumulation_steps": per_step // micro}


def fitting_micro_batch(spec: TrainSpec, longest_tokens: int, row: str) -> int:
    """Rows per micro-batch: `per_device_train_batch_size`, or the largest size that divides
    the optimiser step's rows and keeps rows of `longest_tokens` padded tokens within
    `train_batch_tokens` (one row at least). The step keeps its rows either way; a split is
    logged in one line, `row` saying how long a row is."""
    per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps
    fit = max(1, spec.train_batch_tokens // longest_tokens)
    if fit >= spec.per_device_train_batch_size:
        return spec.per_device_train_batch_size
    micro = max(size for size in range(1, fit + 1) if per_step % size == 0)
    log.info(
        "training: %d rows per step as %d micro-batches of %d, not %d of %d: a micro-batch "
        "holds at most method.train_batch_tokens=%d padded tokens, and a row is up to %s",
        per_step,
        per_step // micro,
        micro,
        spec.gradient_accumulation_steps,
        spec.per_device_train_batch_size,
        spec.train_batch_tokens,
        row,
    )
    return micro


def eval_batch_size(rows: Any, spec: TrainSpec, sequences_per_row: int) -> int:
    """Rows per evaluation batch: `per_device_eval_batch_size`, or fewer when that many of the
    longest `rows` (each `sequences_per_row` sequences in one forward: 2 for a reward model's
    or DPO's pair) would pad a batch past `eval_batch_tokens` tokens; at least one row.

    Evaluation pads each batch to its longest row: 64 pairs of 512-token dialogues are 65,536
    tokens in one forward. At 124M that made evaluation the run's peak (3.6 GB against 1.7 GB
    with this cap) and its loop 1.48x slower (benchmarks/NOTES.md).
    """
    longest = longest_sequence(rows, spec.max_length)
    rows_fit = max(1, spec.eval_batch_tokens // (sequences_per_row * longest))
    if rows_fit >= spec.per_device_eval_batch_size:
        return spec.per_device_eval_batch_size
    log.info(
        "evaluation: %d rows per batch, not per_device_eval_batch_size=%d: a batch holds at "
        "most method.eval_batch_tokens=%d padded tokens, and a held-out row is up to %d x %d",
        rows_fit,
        spec.per_device_eval_batch_size,
        spec.eval_batch_tokens,
        sequences_per_row,
        longest,
    )
    return rows_fit


# Written into a trainer checkpoint dir once transformers has finished saving it: a
# checkpoint without it was cut short (SIGKILL mid-save) and is never resumed from.
CHECKPOINT_COMPLETE = model_files.CHECKPOINT_COMPLETE


class TrainingGuard(TrainerCallback):
    """Stops cleanly on SIGINT/SIGTERM and refuses to go on after a non-finite loss.

    Signals are caught by the run-wide handler (`rlhf_exp.signals`); in the `training` phase
    the first one lets the current step finish, then this saves a checkpoint and ends training
    (a second signal stops at once). A NaN/inf loss raises `NonFiniteError` at the log where it
    appears, before any save of that step, so the last checkpoint on disk stays a good one.
    """

    stopping = False  # a signal reached this process or another rank of its group

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if any_process(signals.stop_requested()):
            self.stopping = True
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
    """The checkpoint `resume_from` names: None (fresh), `latest` in this run dir, or a path.

    `latest` in a run dir without a complete checkpoint yet (stopped before its first save,
    or while an upstream stage trained) starts from scratch, saying so; a named path that
    is not a complete checkpoint is an error.
    """
    choice = ctx.run.resume_from
    if choice is None:
        return None
    if choice == "latest":
        path = latest_checkpoint(ctx.checkpoint_dir)
        if path is None:
            log.warning(
                "resume_from=latest: no complete checkpoint in %s yet; starting from scratch",
                ctx.checkpoint_dir,
            )
        return path
    path = Path(choice).expanduser()  # as `schema.check_paths` read it
    if not (path / CHECKPOINT_COMPLETE).is_file():
        raise UserError(f"resume_from={choice!r}: no complete checkpoint at {choice}")
    return path


# Written into a trainer checkpoint beside transformers' own state: the running sums that
# transformers and TRL keep only in memory between two logs, so a resumed run's `train/loss`
# and the first values it logs cover every step, as in a run that was never stopped.
LOSS_STATE = "loss_state-rank{rank}.json"


class ProgressToLogFile(ProgressCallback):
    """transformers' progress bars, with each log dict (`{'loss': '7.267', ...}`) written to the
    run's log file (Hydra's file handler) instead of the terminal, where a line per log broke
    up the bars; the same numbers reach TensorBoard and metrics.json. With
    RLHF_EXP_TRAINER_LOGS=terminal the terminal gets them as transformers prints them."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: v for k, v in logs.items() if k != "total_flos"}
        record = logging.LogRecord(
            "transformers.trainer", logging.INFO, __file__, 0, "%s", (shown,), None
        )
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(record)


def _logs_to_file(trainer: Any) -> None:
    if os.environ.get("RLHF_EXP_TRAINER_LOGS") == "terminal":
        return
    if any(type(cb) is ProgressCallback for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(ProgressToLogFile)


class ReleaseFreedMemory(TrainerCallback):
    """Trims the C heap (`release_freed_memory`) where a run changes phase: before the first
    step, before an evaluation or checkpoint, and after each. Not between two training steps:
    they reuse each other's freed memory, and handing it back only to fault it in again cost
    ~3% of a 124M step (benchmarks/NOTES.md, "Sticky heap")."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        release_freed_memory()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # DefaultFlowCallback, first in the list, has already decided what follows this step
        if control.should_evaluate or control.should_save or control.should_training_stop:
            release_freed_memory()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        release_freed_memory()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        release_freed_memory()


class LossState(TrainerCallback):
    """Saves and restores the trainer's running sums with each checkpoint.

    transformers sums the loss of steps not yet logged in `_tr_loss` (a tensor), the logged
    ones in `_total_loss_scalar`, and on resume starts both at zero: the final `train/loss`
    then averages only the resumed steps. TRL's trainers likewise collect each step's
    metrics (`_metrics["train"]`, averaged at the next log) and count tokens
    (`_total_train_tokens`). Restored at `on_train_begin` (after transformers reset them),
    all of them go on exactly as without the stop.
    """

    def __init__(self, trainer: Any, resumed_from: Path | None) -> None:
        self.trainer, self.resumed_from = trainer, resumed_from
        self.restored = False  # the sums now cover the steps before the resume too

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        saved = read_loss_state(self.resumed_from, args.process_index)
        if saved is None:
            return
        self.restored = True
        trainer = self.trainer
        trainer._total_loss_scalar = saved["total_loss"]
        trainer._tr_loss += saved["unlogged_loss"]
        trainer._globalstep_last_logged = saved["last_logged_step"]
        if "metrics" in saved and isinstance(getattr(trainer, "_metrics", None), dict):
            trainer._metrics["train"].clear()
            trainer._metrics["train"].update(saved["metrics"])
        if "total_train_tokens" in saved:
            trainer._total_train_tokens = saved["total_train_tokens"]

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Called before `TrainingGuard.on_save` marks the checkpoint complete.
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        trainer = self.trainer
        saved: dict[str, Any] = {
            "total_loss": trainer._total_loss_scalar,
            "unlogged_loss": trainer._tr_loss.item(),
            "last_logged_step": trainer._globalstep_last_logged,
        }
        metrics = getattr(trainer, "_metrics", None)
        if isinstance(metrics, dict) and "train" in metrics:
            saved["metrics"] = {k: list(v) for k, v in metrics["train"].items()}
        if hasattr(trainer, "_total_train_tokens"):
            saved["total_train_tokens"] = trainer._total_train_tokens
        try:
            text = json.dumps(saved)
        except TypeError:  # a metric that is not a number: keep the loss sums at least
            saved.pop("metrics", None)
            saved.pop("total_train_tokens", None)
            text = json.dumps(saved)
        (checkpoint / LOSS_STATE.format(rank=args.process_index)).write_text(text + "\n")


def read_loss_state(checkpoint: Path | None, rank: int = 0) -> dict[str, Any] | None:
    if checkpoint is None:
        return None
    try:
        return json.loads((Path(checkpoint) / LOSS_STATE.format(rank=rank)).read_text())
    except (OSError, ValueError):  # a checkpoint from before this file existed
        return None


def finished_checkpoint(trainer: Any, checkpoint: Path) -> dict[str, Any] | None:
    """The trainer state saved in `checkpoint` when training had reached its last step."""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    max_steps = trainer.args.max_steps if trainer.args.max_steps > 0 else state.get("max_steps")
    return state if max_steps and state.get("global_step", 0) >= max_steps else None


def restore_finished(trainer: Any, checkpoint: Path) -> Any:
    """Put the trainer where `train()` left it after its last step, from the checkpoint of
    that step, without training: the weights, the state (log history) and the final loss.

    (`train(resume_from_checkpoint=...)` would take one more step.) Returns a `TrainOutput`
    whose speed metrics are zero: this run trained for 0 s.
    """
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    trainer._initial_num_input_tokens_seen = trainer.state.num_input_tokens_seen
    step = trainer.state.global_step
    saved = read_loss_state(checkpoint, trainer.args.process_index)
    total = saved["total_loss"] + saved["unlogged_loss"] if saved else float("nan")
    loss = total / max(step, 0.001)
    metrics = {
        "train_runtime": 0.0,
        "train_samples_per_second": 0.0,
        "train_steps_per_second": 0.0,
        "total_flos": trainer.state.total_flos,
        "train_loss": loss,
    }
    return TrainOutput(step, loss, metrics)


# Token-id columns TRL 1.x's trainers feed the model (SFT: input_ids; reward: chosen/rejected
# with the prompt inside; DPO, KTO: prompt_ids apart). A row costs its prompt plus its longest.
_SEQUENCE_COLUMNS = ("input_ids", "chosen_ids", "rejected_ids", "completion_ids")


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


def run_training(trainer: Any, ctx: RunContext, eval_on_start: bool = False) -> Any:
    """`trainer.train()` under a `TrainingGuard`, resuming when `resume_from` says so.

    `eval_on_start`: evaluate before the first step (logged at step 0) in a fresh run; a
    resumed one has that evaluation in its restored log history.

    Runs in the `training` phase (`rlhf_exp.signals`): a signal ends training after the
    current step and its checkpoint, then this raises `Interrupted`. What follows (saving,
    evaluating) is the `evaluation` phase, where a signal stops at once.
    """
    # TRL writes a card into checkpoints/ at every save, naming the base model "None" (ours
    # load from local dirs); the run's card is model/README.md (rlhf_exp/model_card.py).
    trainer.create_model_card = lambda *args, **kwargs: None
    _logs_to_file(trainer)
    start = resume_checkpoint(ctx)
    trainer.args.eval_on_start = eval_on_start and start is None
    sums = LossState(trainer, start)
    trainer.add_callback(sums)  # before the guard marks a save complete
    guard = TrainingGuard()
    trainer.add_callback(guard)
    trainer.add_callback(ReleaseFreedMemory)
    if trainer.args.train_sampling_strategy == "group_by_length":
        feed_lengths(trainer)
    if start is not None and finished_checkpoint(trainer, start):
        # train() would take one step more: go straight to saving and evaluating
        log.info("resuming from %s: training had finished; saving and evaluating", start)
        result = restore_finished(trainer, start)
        signals.rename_phase("evaluation")
        return result
    if start is not None:
        log.info("resuming from %s", start)
    # RLOO, GRPO and online DPO sample through transformers' generate: its per-token draw,
    # 2.7x faster on a CPU (generation.one_draw_per_row_by_race)
    with signals.phase("training", deferred=True), one_draw_per_row_by_race():
        result = trainer.train(resume_from_checkpoint=str(start) if start else None)
        # also when the signal came after the last step (the group decides together)
        if guard.stopping or any_process(signals.stop_requested()):
            raise Interrupted(ctx.run_dir, trainer.state.global_step)
    signals.rename_phase("evaluation")
    if sums.restored:  # (its checkpoint may be rotated away by now)
        # transformers averages over this call's steps; the restored sums cover them all
        loss = trainer._total_loss_scalar / max(trainer.state.global_step, 0.001)
        result = result._replace(training_loss=loss, metrics={**result.metrics, "train_loss": loss})
    return result


@signals.phase("evaluation")
def final_eval_metrics(trainer: Any) -> dict[str, float]:
    """The trained model's held-out trainer metrics (`eval_loss`, `eval_rewards/*`, ...): SFT,
    reward, DPO and KTO report these.

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


def refuse_multiprocess_precompute(spec: Any) -> None:
    """DPO/KTO: precomputed reference log-probs need one process.

    TRL maps the precomputed log-probs onto our in-memory datasets on the main process first;
    the other ranks then look for its temporary cache files and fail (measured with 2 CPU
    processes). Without precomputation the reference runs every step.
    """
    if spec.precompute_ref_log_probs and world_size() > 1:
        raise ConfigError(
            "method.precompute_ref_log_probs",
            True,
            "false when training with several processes (accelerate launch)",
        )


def rows_for_steps(dataset: Any, spec: Any, seed: int) -> Any:
    """The rows `spec.max_steps` optimiser steps consume, when that is fewer than `dataset`
    holds: a seeded random subset, trained on for exactly one epoch.

    Precomputing reference log-probs scores every row before step 1 (TRL), so a short run on a
    large dataset spent most of its time scoring rows it never trains on. The subset is a
    uniform draw, as the rows a shuffled epoch reaches in `max_steps` steps are.
    """
    if spec.max_steps < 0:
        return dataset
    per_step = spec.per_device_train_batch_size * spec.gradient_accumulation_steps * world_size()
    needed = spec.max_steps * per_step
    if needed >= len(dataset):
        return dataset
    log.info(
        "training on %d of %d rows (max_steps=%d x %d a step, a seeded draw): only these are "
        "scored by the reference (train/pairs or train/rows in metrics.json)",
        needed,
        len(dataset),
        spec.max_steps,
        per_step,
    )
    return dataset.shuffle(seed=seed).select(range(needed))
