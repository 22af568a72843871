"""Kahneman-Tversky Optimization on unpaired feedback (TRL `KTOTrainer`), from the SFT policy.

    python run.py method=kto                         # tiny model, embedded sentiment task
    python run.py method=kto lora=default            # LoRA; reference = adapters disabled
    python run.py method=kto method.beta=0.5
    python run.py method=kto dataset=files +dataset.data_files.sft=demos.jsonl \
        +dataset.data_files.unpaired=feedback.jsonl eval.reward_model=false
        # feedback rows: prompt, completion, label (true/false); no pairs, so no reward model

KTO (Ethayarajh et al. 2024, Eq. 7) needs one binary label per completion: desirable or not.
The rows are the dataset's `unpaired` split when it has one (held out by prompt, as pairs
are), else its preference pairs, each turned into two rows: (prompt, chosen, desirable) and
(prompt, rejected, undesirable). `load_task` holds pairs out by prompt, so both rows of a pair
are on the same side. Everything is tokenised and cut by the project's one rule (tokens.py)
before TRL sees it: pairs as pairs (one prompt cut for both rows; ties dropped), unpaired rows
as prompt + completion.

The loss's reference point z0, KL(policy || reference), is estimated per micro-batch from
mismatched rows: each row's prompt with the previous row's completion (TRL's rotation). So
batches are read in order from rows shuffled once by `seed`: a random sampler would break the
rotation, and unshuffled pairs would give a row its own partner (same prompt) as the mismatch.
z0 is detached (no gradient); a mismatched completion that would not fit max_length after the
row's prompt loses its tail. TRL's `kl` metric is logged as `kl_reference_point`, apart
from `eval/kl` (the policy's own samples, evaluation.py).

Reference: the SFT policy, as for DPO: with LoRA its adapters switched off; without, a frozen
copy, or its log-probs precomputed before training (the default). `final_evaluation` then
compares the policy with the SFT policy on the held-out prompts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

from datasets import Dataset
from trl import KTOConfig, KTOTrainer

from rlhf_exp import signals
from rlhf_exp.config.kto import KTOSpec
from rlhf_exp.config.schema import RunConfig
from rlhf_exp.context import RunContext
from rlhf_exp.data.formats import normalize_unpaired, strip_eos
from rlhf_exp.data.loading import load_raw_split, mapped_splits, split_unpaired
from rlhf_exp.data.tokens import require_rows
from rlhf_exp.errors import UserError
from rlhf_exp.evaluation import final_evaluation
from rlhf_exp.methods import evaluation_needs, register
from rlhf_exp.models import (
    count_parameters,
    load_causal_lm,
    load_tokenizer,
    lora_config,
    save_merged,
)
from rlhf_exp.training import (
    eval_batch_size,
    eval_subset,
    final_eval_metrics,
    reference_policy,
    refuse_multiprocess_precompute,
    rows_for_steps,
    run_training,
    throughput,
    trl_config,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------- rows
def unpair(pairs: Dataset) -> Dataset:
    """Tokenised pairs as unpaired rows: (prompt, chosen, True) then (prompt, rejected, False)
    for each pair, in pair order (shuffle before batching)."""

    def split(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {"prompt_ids": [], "completion_ids": [], "label": []}
        sides = batch["prompt_ids"], batch["chosen_ids"], batch["rejected_ids"]
        for p, c, r in zip(*sides, strict=True):
            out["prompt_ids"] += [p, p]
            out["completion_ids"] += [c, r]
            out["label"] += [True, False]
        return out

    return pairs.map(split, batched=True, remove_columns=pairs.column_names, desc="unpairing")


def from_sft_rows(rows: Dataset, labels: list[bool]) -> Dataset:
    """`input_ids`/`completion_mask` rows (tokens.py, kind "sft") as prompt_ids/completion_ids,
    with their labels."""

    def split(batch: dict[str, list]) -> dict[str, list]:
        cuts = [len(m) - sum(m) for m in batch["completion_mask"]]  # prompt tokens come first
        ids = batch["input_ids"]
        return {
            "prompt_ids": [x[:k] for x, k in zip(ids, cuts, strict=True)],
            "completion_ids": [x[k:] for x, k in zip(ids, cuts, strict=True)],
        }

    out = rows.map(split, batched=True, remove_columns=rows.column_names, desc="splitting")
    return out.add_column("label", labels)


def with_kl_completions(rows: Dataset, batch_size: int, max_length: int) -> Dataset:
    """`KL_completion_ids` of each row: the completion of the row before it in its batch of
    `batch_size` (the first takes the last's), cut to fit `max_length` after the row's prompt.
    TRL's rotation: (x_1, y_n), (x_2, y_1), ..., (x_n, y_{n-1}) estimate z0 for that batch."""

    def rotate(batch: dict[str, list]) -> dict[str, list]:
        done = batch["completion_ids"]
        shifted = done[-1:] + done[:-1]
        kl = [c[: max_length - len(p)] for p, c in zip(batch["prompt_ids"], shifted, strict=True)]
        return {"KL_completion_ids": kl}

    return rows.map(rotate, batched=True, batch_size=batch_size, desc="pairing KL completions")


def loss_weights(
    n_desirable: int, n_undesirable: int, desirable: float | None, undesirable: float | None
) -> tuple[float, float]:
    """(desirable_weight, undesirable_weight): given values are kept, missing ones set so that
    weight x count is equal for both labels (the KTO paper's Eq. 8 asks for a ratio in
    [1, 4/3]); with neither given, the mean weight per row is also 1."""
    n_d, n_u = max(n_desirable, 1), max(n_undesirable, 1)
    if desirable is None and undesirable is None:
        return (n_d + n_u) / (2 * n_d), (n_d + n_u) / (2 * n_u)
    if desirable is None:
        return undesirable * n_u / n_d, undesirable
    if undesirable is None:
        return desirable, desirable * n_d / n_u
    return desirable, undesirable


def _eval_prompts(rows: Dataset, n: int, tokenizer: Any) -> Dataset:
    """Up to `n` distinct prompts of held-out unpaired rows, each with its first desirable
    completion as the reference ("" when it has none)."""
    refs: dict[str, str] = {}
    columns = rows["prompt"], rows["completion"], rows["label"]
    for prompt, completion, good in zip(*columns, strict=True):
        if good and not refs.get(prompt):
            refs[prompt] = strip_eos(completion, tokenizer)
        refs.setdefault(prompt, "")
    prompts = list(refs)[:n]
    return Dataset.from_dict({"prompt": prompts, "reference": [refs[p] for p in prompts]})


def _unpaired_rows(cfg: RunConfig, ctx: RunContext, task: Any, tokenizer: Any) -> tuple:
    """(train, held-out, task) from the dataset's `unpaired` split, held out by prompt and
    following the task's other splits (no KTO training prompt is an evaluation prompt)."""
    data = cfg.dataset
    raw = load_raw_split(data, "unpaired", ctx.cache.root)  # checked up front (data/checks.py)
    train_rows, test_rows = split_unpaired(
        normalize_unpaired(raw, tokenizer, data.columns), task, data.test_fraction, data.seed
    )
    if task.eval_prompts is None:  # no other split to take evaluation prompts from
        evals = _eval_prompts(test_rows, data.n_eval_prompts, tokenizer)
        task = dataclasses.replace(task, eval_prompts=evals)
    out = []
    for name, rows in (("unpaired_train", train_rows), ("unpaired_test", test_rows)):
        texts = rows.select_columns(["prompt", "completion"])
        done = ctx.tokenize(texts, "sft", tokenizer, name)  # the same cut as SFT rows
        labels = rows["label"]
        out.append(from_sft_rows(done.dataset, [labels[i] for i in done.kept]))
    return out[0], out[1], task


def _tokenized_rows(cfg: RunConfig, ctx: RunContext, task: Any, tokenizer: Any) -> tuple:
    """(train rows, held-out rows, task): prompt_ids/completion_ids/label, each shuffled."""
    data = cfg.dataset
    if "unpaired" in mapped_splits(data):
        train, test, task = _unpaired_rows(cfg, ctx, task, tokenizer)
    elif task.pref_train is not None and task.pref_test is not None:
        knobs = "method.max_length / method.max_completion_length"
        pairs = []
        for name, rows in (("pref_train", task.pref_train), ("pref_test", task.pref_test)):
            done = ctx.tokenize(rows, "preference", tokenizer, name)
            require_rows(done, name, knobs)
            pairs.append(done.dataset)
        train, test = unpair(pairs[0]), unpair(pairs[1])
        log.info(
            "kto: %d pairs -> %d rows (chosen desirable, rejected not)", len(pairs[0]), len(train)
        )
    else:
        raise UserError(
            f"dataset {data.name!r} has no rows for KTO: give it an unpaired split "
            "(prompt/completion/label) or preference pairs"
        )
    return train.shuffle(seed=cfg.seed).flatten_indices(), test.shuffle(seed=cfg.seed), task


# ------------------------------------------------------------------------------- trainer
class TokenizedKTOTrainer(KTOTrainer):
    """`KTOTrainer` on rows already tokenised and cut by the project's token budget.

    TRL's preparation re-tokenises text and cuts prompt + completion from the right; rows that
    carry prompt_ids/completion_ids/label (its collator's input) only get their KL rows.
    """

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, name: str) -> Any:
        if not {"prompt_ids", "completion_ids", "label"} <= set(dataset.column_names):
            return super()._prepare_dataset(dataset, processing_class, args, name)
        if not self.calculate_KL or "KL_completion_ids" in dataset.column_names:
            return dataset
        train = name == "train"  # each split rotated within the batches it is read in
        size = args.per_device_train_batch_size if train else args.per_device_eval_batch_size
        return with_kl_completions(dataset, size, args.max_length)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for metrics in self._metrics.values():  # z0, not the KL of the policy's samples
            if "kl" in metrics:
                metrics["kl_reference_point"] = metrics.pop("kl")
        super().log(logs, start_time)


def build_trainer(
    cfg: RunConfig, ctx: RunContext, init: str, model: Any, tokenizer: Any, train: Any, test: Any
) -> KTOTrainer:
    """A `KTOTrainer` for `model` (the policy loaded from `init`) on tokenised rows; the
    reference as in dpo.py: none with LoRA or precomputation, else a frozen copy of `init`."""
    spec: KTOSpec = cfg.method  # type: ignore[assignment]
    n_desirable = sum(train["label"])
    weights = loss_weights(
        n_desirable, len(train) - n_desirable, spec.desirable_weight, spec.undesirable_weight
    )
    ratio = weights[0] * n_desirable / max(weights[1] * (len(train) - n_desirable), 1e-9)
    log.log(
        logging.INFO if 1 <= ratio <= 4 / 3 else logging.WARNING,
        "kto: loss weights %.3g (desirable) / %.3g: weighted ratio %.3g (the KTO paper: 1-4/3)",
        *weights,
        ratio,
    )
    peft_config = lora_config(cfg.model, cfg.lora, "CAUSAL_LM", model=model)
    ref_model = None
    if peft_config is None and not spec.precompute_ref_log_probs:
        ref_model = load_causal_lm(init, cfg.model, tokenizer=tokenizer).eval()
        ref_model.requires_grad_(False)
    held_out = eval_subset(test, spec)
    args = trl_config(
        KTOConfig,
        spec,
        ctx,
        # the KL rows take a forward of their own
        per_device_eval_batch_size=eval_batch_size(held_out, spec, sequences_per_row=1),
        # Batches in order: the KL rows are built against it (the rows are shuffled instead).
        train_sampling_strategy="sequential",
        beta=spec.beta,
        desirable_weight=weights[0],
        undesirable_weight=weights[1],
        max_length=spec.max_length,  # rows fit already; the collator's cut never bites
        precompute_ref_log_probs=spec.precompute_ref_log_probs,
        precompute_ref_batch_size=spec.precompute_ref_batch_size,
        pad_to_multiple_of=None,  # dynamic padding: each batch to its own longest row
    )
    return TokenizedKTOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train,
        eval_dataset=held_out,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=ctx.tracker.trainer_callbacks(),
    )


@register("kto", needs=evaluation_needs("sft"))
def run(cfg: RunConfig, ctx: RunContext) -> dict[str, Any]:
    spec: KTOSpec = cfg.method  # type: ignore[assignment]
    refuse_multiprocess_precompute(spec)
    init = str(ctx.upstream("sft"))
    tokenizer = load_tokenizer(init, cfg.model)
    model = load_causal_lm(init, cfg.model, tokenizer=tokenizer)
    started = time.perf_counter()
    train, test, task = _tokenized_rows(cfg, ctx, ctx.task(tokenizer), tokenizer)
    if spec.precompute_ref_log_probs:  # score only the rows this run will train on
        train = rows_for_steps(train, spec, cfg.seed)
    with signals.phase("precompute" if spec.precompute_ref_log_probs else "setup"):
        trainer = build_trainer(cfg, ctx, init, model, tokenizer, train, test)
    setup_s = time.perf_counter() - started  # tokenising, and scoring rows with the reference
    trainable, total = count_parameters(trainer.model)
    log.info("kto: %d of %d parameters trainable", trainable, total)
    result = run_training(trainer, ctx)
    save_merged(trainer.model, tokenizer, ctx.model_dir)  # before evaluating: never lost
    held_out = final_eval_metrics(trainer)
    eval_metrics = final_evaluation(
        ctx, trainer.model, tokenizer, task, reference=reference_policy(trainer, cfg, init)
    )
    nan = float("nan")  # a held-out set with one label only has no margin
    return {
        "train/loss": result.training_loss,
        "train/rows": len(train),
        "train/desirable_rows": sum(train["label"]),
        "method/desirable_weight": trainer.desirable_weight,
        "method/undesirable_weight": trainer.undesirable_weight,
        "eval/loss": held_out["eval_loss"],
        "eval/rewards_chosen": held_out.get("eval_rewards/chosen", nan),
        "eval/rewards_rejected": held_out.get("eval_rewards/rejected", nan),
        "eval/rewards_margins": held_out.get("eval_rewards/margins", nan),
        "eval/kl_reference_point": held_out.get("eval_kl_reference_point", nan),
        "eval/rows": len(trainer.eval_dataset),
        **eval_metrics,
        "train/global_step": trainer.state.global_step,
        **throughput(trainer, result),
        "time/trainer_setup_s": round(setup_s, 2),
        "model/trainable_params": trainable,
        "model/total_params": total,
    }
