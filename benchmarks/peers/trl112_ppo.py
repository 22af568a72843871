"""One TRL 1.12.0 PPO run (`trl.experimental.ppo.PPOTrainer`) with our settings; prints throughput.

    benchmarks/peers/.venv-trl112/bin/python benchmarks/peers/trl112_ppo.py \\
        --settings settings.json --output-dir /tmp/trl112

Run by `benchmarks/ppo_peers.py`, which builds the venv (trl==1.12.0, the same torch,
transformers and accelerate as the project) and writes `settings.json`. Policy and reference
= our SFT policy dir; reward model and value model = our reward model dir (our critic starts
from it too when the reward is the model). The last stdout line is `RESULT {json}`: generated
response tokens (up to and including the first EOS, else the whole response: as our trainer
counts them), the wall seconds of `trainer.train()`, and how wide the generated batches were.

Batch mapping: TRL 1.12 rolls out per_device_train_batch_size x gradient_accumulation_steps
prompts per update and runs a micro-batch of per_device_train_batch_size per optimiser step
inside each of num_mini_batches minibatches. per_device_train_batch_size = B (our rollout),
accumulation 1 and num_mini_batches = B / micro make each minibatch one micro-batch of `micro`
with its own optimiser step (the slice [0:B] of a `micro`-long index list is that list), which
is our update loop. This script needs no project code (the venv does not have it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from result import print_result, timed_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    opts = parser.parse_args()
    s = json.loads(opts.settings.read_text())

    import torch
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    B, micro = s["rollout_batch_size"], s["micro_batch_size"]
    if s["gradient_accumulation_steps"] != 1:
        raise SystemExit("the TRL 1.12 mapping is exact only for gradient_accumulation_steps=1")
    tokenizer = AutoTokenizer.from_pretrained(s["policy"], padding_side="left")
    eos_id = tokenizer.eos_token_id

    # every prompt our trainer draws (iterations x B), tokenised as ours does: no special
    # tokens, cut to max_length - response_length
    steps = [json.loads(line)["prompts"] for line in Path(s["prompts"]).read_text().splitlines()]
    prompts = [p for step in steps[: s["iterations"]] for p in step]
    ids = tokenizer(
        prompts,
        add_special_tokens=False,
        truncation=True,
        max_length=s["max_length"] - s["response_length"],
    )["input_ids"]
    train = Dataset.from_dict({"input_ids": ids})
    evals = train.select(range(min(8, len(train))))  # required by the trainer, never used

    def load_lm():
        return AutoModelForCausalLM.from_pretrained(s["policy"], dtype=torch.float32)

    def load_rm():
        return AutoModelForSequenceClassification.from_pretrained(
            s["reward_model"], num_labels=1, dtype=torch.float32
        )

    config = PPOConfig(
        output_dir=str(opts.output_dir),
        per_device_train_batch_size=B,
        gradient_accumulation_steps=1,
        num_mini_batches=B // micro,
        local_rollout_forward_batch_size=B,  # one generate call per rollout, as ours
        total_episodes=s["iterations"] * B,
        num_ppo_epochs=s["ppo_epochs"],
        response_length=s["response_length"],
        stop_token="eos",  # stop at EOS, as ours
        temperature=s["temperature"],
        missing_eos_penalty=None,
        kl_coef=s["kl_coef"],
        kl_estimator="k1",
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        whiten_rewards=False,
        learning_rate=s["learning_rate"],
        adam_epsilon=s["adam_eps"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        num_sample_generations=0,  # no sample generations inside the loop
        sft_model_path=s["policy"],
        reward_model_path=s["reward_model"],
        bf16=s.get("bf16", False),  # as ours when our model computes in bf16 (autocast)
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        seed=s["seed"],
    )

    counted = {"tokens": 0, "generated": 0, "rows": 0, "calls": 0}
    generate_batch = ppo_module.batch_generation

    def counting_batch_generation(model, queries, *args, **kwargs):
        query_responses, logits = generate_batch(model, queries, *args, **kwargs)
        response = query_responses[:, queries.shape[1] :]  # (B, width)
        width = response.shape[1]
        is_eos = response == eos_id
        first_eos = is_eos.int().argmax(1)
        lengths = torch.where(is_eos.any(1), first_eos + 1, torch.full_like(first_eos, width))
        counted["tokens"] += int(lengths.sum())
        counted["generated"] += response.numel()  # incl. the padding after early EOS
        counted["rows"] += response.shape[0]
        counted["calls"] += 1
        return query_responses, logits

    ppo_module.batch_generation = counting_batch_generation
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=load_lm(),
        ref_model=load_lm(),
        reward_model=load_rm(),
        value_model=load_rm(),
        train_dataset=train,
        eval_dataset=evals,
    )
    seconds = timed_train(trainer)
    print_result(
        {
            "tokens": counted["tokens"],
            "seconds": seconds,
            "completions": counted["rows"],
            "generations": counted["calls"],
            "generated_width_mean": counted["generated"] / max(counted["rows"], 1),
            "optimizer_steps": s["iterations"] * s["ppo_epochs"] * (B // micro),
        }
    )


if __name__ == "__main__":
    main()
