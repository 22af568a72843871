"""One TRL 1.16 RLOOTrainer or GRPOTrainer run against our gold reward; prints its throughput.

    python benchmarks/peers/trl_online.py --trainer rloo --settings settings.json

Run by `benchmarks/ppo_peers.py` (which writes `settings.json`: policy dir, prompts JSONL and
the PPO knobs to match) in the project's own Python. The last stdout line is
`RESULT {json}`: generated completion tokens (EOS included, as our trainer counts them), the
wall seconds of `trainer.train()`, and how many generation batches were scored.

Mapping from our PPO iteration (rollout of B prompts x 1 sample, ppo_epochs passes of
B / (micro x accum) optimiser steps): num_generations = G (>= 2, TRL's minimum), so B / G
unique prompts x G samples = B completions per generation; per_device_train_batch_size =
micro, gradient_accumulation_steps = accum, steps_per_generation = B / micro, num_iterations =
ppo_epochs, max_steps = iterations x ppo_epochs x B / (micro x accum). So each generation
feeds the same number of optimiser steps over the same number of completions as ours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from result import print_result, timed_train

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", choices=["rloo", "grpo"], required=True)
    parser.add_argument("--settings", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    opts = parser.parse_args()
    s = json.loads(opts.settings.read_text())

    sys.path.insert(0, str(ROOT))  # rlhf_exp without relying on an editable install
    import torch
    import trl
    from datasets import Dataset

    from rlhf_exp.rewards.gold import vader_sentiment

    G = s["num_generations"]
    B, micro = s["rollout_batch_size"], s["micro_batch_size"]
    accum = s["gradient_accumulation_steps"]
    minibatches = B // (micro * accum)
    steps = s["iterations"] * s["ppo_epochs"] * minibatches

    # Step k's prompts: the first B / G of the B prompts our trainer draws at step k, in order
    # (shuffle_dataset=False below), so every generation batch holds B / G prompts x G samples.
    per_step = [json.loads(line)["prompts"] for line in Path(s["prompts"]).read_text().splitlines()]
    prompts = [p for step in per_step[: s["iterations"]] for p in step[: B // G]]
    dataset = Dataset.from_dict({"prompt": prompts})

    counted = {"tokens": 0, "completions": 0, "generations": 0}

    def gold_reward(prompts, completions, completion_ids=None, **_):
        """Our VADER gold reward; also counts the generated tokens (EOS kept by TRL)."""
        counted["tokens"] += sum(len(ids) for ids in completion_ids)
        counted["completions"] += len(completions)
        counted["generations"] += 1
        return vader_sentiment(prompts, completions)

    common = dict(
        output_dir=str(opts.output_dir),
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accum,
        steps_per_generation=B // micro,
        num_generations=G,
        num_iterations=s["ppo_epochs"],
        max_steps=steps,
        max_completion_length=s["response_length"],
        temperature=s["temperature"],
        top_k=0,
        top_p=1.0,
        beta=s["kl_coef"],  # GRPO's default 0.0 would skip the reference model; ours has one
        epsilon=s["cliprange"],
        learning_rate=s["learning_rate"],
        adam_epsilon=s["adam_eps"],
        weight_decay=0.0,
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        warmup_steps=0,
        shuffle_dataset=False,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=s["seed"],
        model_init_kwargs={"dtype": torch.float32},
    )
    if opts.trainer == "rloo":
        config, trainer_cls = trl.RLOOConfig(**common), trl.RLOOTrainer
    else:
        config, trainer_cls = trl.GRPOConfig(**common), trl.GRPOTrainer
    trainer = trainer_cls(
        model=s["policy"], reward_funcs=gold_reward, args=config, train_dataset=dataset
    )
    seconds = timed_train(trainer)
    print_result(
        {
            "tokens": counted["tokens"],
            "seconds": seconds,
            "completions": counted["completions"],
            "generations": counted["generations"],
            "optimizer_steps": trainer.state.global_step,
        }
    )


if __name__ == "__main__":
    main()
