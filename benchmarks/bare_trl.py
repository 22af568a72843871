"""The same training as `run.py method=dpo|reward`, written as a bare TRL script.

    python benchmarks/bare_trl.py dpo --model DIR --data DIR --out DIR [--naive] [knobs]

No rlhf_exp import: the model dir is the SFT policy a framework run started from, and
`--data` holds `train.jsonl` / `test.jsonl` of prompt/chosen/rejected rows exported from the
framework's task, so both sides train the same model on the same rows in the same order
(same seed, same sampler). The trainer arguments mirror `rlhf_exp.training.trainer_args`;
what this script leaves out is exactly the framework: its callbacks (signal guard, NaN
check, TensorBoard tracker, token counting), config validation, artifact cache and reports.

`--naive` is the original notebook's setup instead: every batch padded to `max_length`,
TRL's defaults (gradient checkpointing on), a separate frozen reference model run at every
step rather than precomputed log-probs (DPO), fp32. `--lora-r R` trains LoRA adapters
(alpha 2R, GPT-2's c_attn/c_proj/c_fc, as `lora=default` targets) instead of every weight,
as the notebook's GPT-2 reward model did with r=8.

Prints one JSON line: loop and setup seconds, samples/s, held-out metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from datasets import load_dataset
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    set_seed,
)


def common_args(opts: argparse.Namespace) -> dict:
    return {
        "output_dir": str(opts.out),
        "seed": opts.seed,
        "data_seed": opts.seed,
        "learning_rate": opts.lr,
        "num_train_epochs": 1,
        "max_steps": opts.steps,
        "per_device_train_batch_size": opts.batch,
        "gradient_accumulation_steps": opts.grad_accum,
        "per_device_eval_batch_size": opts.eval_batch,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.05,
        "max_grad_norm": 1.0,
        "logging_steps": opts.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": opts.eval_steps,
        "save_strategy": "steps",
        "save_steps": opts.save_steps,
        "save_total_limit": 2,
        "report_to": "none",
        "bf16": False,
        "gradient_checkpointing": opts.naive,  # TRL's default is on; the naive setup keeps it
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": False,
        "use_cpu": not torch.cuda.is_available(),
    }


def dpo_trainer(opts: argparse.Namespace, train, test, tokenizer):
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(opts.model)
    ref_model = AutoModelForCausalLM.from_pretrained(opts.model) if opts.naive else None
    args = DPOConfig(
        **common_args(opts),
        beta=opts.beta,
        max_length=opts.max_length,
        precompute_ref_log_probs=not opts.naive,
        pad_to_multiple_of=opts.max_length if opts.naive else None,
    )
    return DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        peft_config=lora(opts, "CAUSAL_LM"),
    )


def reward_trainer(opts: argparse.Namespace, train, test, tokenizer):
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(opts.model, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        **common_args(opts),
        max_length=opts.max_length,
        pad_to_multiple_of=opts.max_length if opts.naive else None,
    )
    return RewardTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=test,
        processing_class=tokenizer,
        peft_config=lora(opts, "SEQ_CLS"),
    )


def lora(opts: argparse.Namespace, task_type: str):
    if not opts.lora_r:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=opts.lora_r,
        lora_alpha=2 * opts.lora_r,
        lora_dropout=0.0,
        target_modules=["c_attn", "c_proj", "c_fc"],
        fan_in_fan_out=True,  # GPT-2's Conv1D layers
        task_type=task_type,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=["dpo", "reward"])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--naive", action="store_true")
    parser.add_argument("--steps", type=int, default=-1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-r", type=int, default=0, help="LoRA rank; 0: full fine-tuning")
    parser.add_argument("--logging-steps", type=int, default=10)
    parser.add_argument("--eval-steps", type=int, default=100)
    parser.add_argument("--save-steps", type=int, default=500)
    opts = parser.parse_args()

    set_seed(opts.seed)  # as rlhf_exp does before loading: the same fresh reward head
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    files = {split: str(opts.data / f"{split}.jsonl") for split in ("train", "test")}
    data = load_dataset("json", data_files=files)
    build = dpo_trainer if opts.method == "dpo" else reward_trainer
    started = time.perf_counter()
    trainer = build(opts, data["train"], data["test"], tokenizer)
    setup_s = time.perf_counter() - started
    result = trainer.train()
    last_eval = [e for e in trainer.state.log_history if "eval_loss" in e]
    if not last_eval or last_eval[-1].get("step") != trainer.state.global_step:
        last_eval.append(trainer.evaluate())
    print(
        json.dumps(
            {
                "time/train_s": result.metrics["train_runtime"],
                "time/trainer_setup_s": setup_s,
                "throughput/samples_per_s": result.metrics["train_samples_per_second"],
                "train/global_step": trainer.state.global_step,
                "train/loss": result.training_loss,
                **{f"eval/{k.removeprefix('eval_')}": v for k, v in last_eval[-1].items()},
            }
        )
    )


if __name__ == "__main__":
    main()
