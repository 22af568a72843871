"""PPO's rollout at GPT-2 small's size: our sampling (log-probs read from the generation
scores) against plain HF `generate` + a separate log-prob forward, and against a static KV
cache, with and without a `torch.compile`d model. Generated tokens/s, interleaved reps.

    python benchmarks/rollout_124m.py --policy RUN/model                 # 64 prompts x 64 new
    python benchmarks/rollout_124m.py --policy RUN/model --variants ours,plain --reps 5
    python benchmarks/rollout_124m.py --policy RUN/model --lora 16 --variants ours,ours-percast

RUN/model is any saved causal LM with its tokenizer (e.g. the SFT policy `benchmarks/run.py
mfu_124m` builds: model=gpt2_shape). Prompts have UltraFeedback's lengths
(`ultrafeedback_like_rows`), cut to `--max-prompt` tokens from the left as PPO cuts them.
Everything runs under bf16 autocast when the CPU has native bf16 (`precision=auto`'s choice),
else fp32, in one process, variants interleaved after one untimed warm-up each; the compiled
variant's compile time is reported apart (its warm-up). Every variant ends with the same
thing: response ids and the log-prob of every sampled token, which is what PPO needs.
`--lora R` samples from the policy wrapped in LoRA (frozen base); `ours-percast` is ours with
frozen weights cast to bf16 at every decode step, as before `frozen_weight_casts_cached`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, median, spread, write_json  # noqa: E402

from rlhf_exp.data.synthetic_dialogues import ultrafeedback_like_rows  # noqa: E402
from rlhf_exp.data.tokens import fit_prompts  # noqa: E402
from rlhf_exp.generation import (  # noqa: E402
    _token_stats,
    generate,
    max_positions,
    sampling_config,
)
from rlhf_exp.hardware import auto_precision, compute_precision  # noqa: E402
from rlhf_exp.rl import response_logprobs  # noqa: E402

VARIANTS = ("ours", "plain", "static", "static-compiled", "ours-percast")


def _left_padded(tokenizer: Any, prompts: list[str], max_prompt: int) -> dict[str, torch.Tensor]:
    ids = fit_prompts(tokenizer, prompts, max_prompt)
    return tokenizer.pad({"input_ids": ids}, padding=True, padding_side="left", return_tensors="pt")


def variants(model: Any, tokenizer: Any, prompts: list[str], new_tokens: int, max_prompt: int):
    max_prompt = min(max_prompt, max_positions(model) - new_tokens)  # as `generate` caps it
    enc = _left_padded(tokenizer, prompts, max_prompt)
    width = enc["input_ids"].shape[1]

    def ours() -> int:
        rollout = generate(model, tokenizer, prompts, max_new_tokens=new_tokens,
                           batch_size=len(prompts), max_prompt_length=max_prompt,
                           return_logprobs=True)  # fmt: skip
        return int(rollout.response_mask.sum())

    def ours_percast() -> int:  # before: frozen weights (LoRA's base) cast at every step
        with mock.patch("rlhf_exp.generation.frozen_weight_casts_cached", contextlib.nullcontext):
            return ours()

    def plain() -> int:
        rollout = generate(model, tokenizer, prompts, max_new_tokens=new_tokens,
                           batch_size=len(prompts), max_prompt_length=max_prompt)  # fmt: skip
        with torch.no_grad():
            logits = model(rollout.input_ids, attention_mask=rollout.attention_mask).logits
        width_p = rollout.prompt_ids.shape[1]
        logits = logits[:, width_p - 1 : -1]
        response_logprobs(logits, rollout.response_ids, 1.0, tokenizer.pad_token_id)
        return int(rollout.response_mask.sum())

    static_config = sampling_config(tokenizer, new_tokens, return_logprobs=True)
    static_config.cache_implementation = "static"

    def static_run() -> int:
        with torch.no_grad():
            out = model.generate(**enc, generation_config=static_config)
        response = out.sequences[:, width:]
        _token_stats(out.scores, response)
        return int((response != tokenizer.pad_token_id).sum())

    compiled_forward = None

    def static_compiled() -> int:
        # the compiled forward only for this variant's calls, so the others interleaved with it
        # keep running the eager model
        nonlocal compiled_forward
        if compiled_forward is None:
            compiled_forward = torch.compile(model.forward, dynamic=False)
        model.forward = compiled_forward
        try:
            return static_run()
        finally:
            del model.forward  # back to the class's (eager) forward

    return {"ours": ours, "plain": plain, "static": static_run,
            "static-compiled": static_compiled, "ours-percast": ours_percast}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, type=Path, help="a saved causal LM dir")
    parser.add_argument("--prompts", type=int, default=64, help="rollout batch (prompts)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--max-prompt", type=int, default=256, help="prompt tokens kept")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS[:3]),
                        help=f"comma-separated, of {', '.join(VARIANTS)}")  # fmt: skip
    parser.add_argument(
        "--lora",
        type=int,
        default=0,
        help="LoRA rank to wrap the policy in (base frozen, as lora=default)",
    )
    parser.add_argument("--out", default="rollout_124m")
    opts = parser.parse_args()
    chosen = [v for v in opts.variants.split(",") if v]
    if bad := [v for v in chosen if v not in VARIANTS]:
        parser.error(f"unknown variants {bad}; choose from {', '.join(VARIANTS)}")

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(opts.policy)
    model = AutoModelForCausalLM.from_pretrained(opts.policy).eval()
    if opts.lora:
        import peft

        targets = ["c_attn", "c_proj", "c_fc"]  # model.lora_target_modules' default
        lora = peft.LoraConfig(r=opts.lora, lora_alpha=2 * opts.lora, target_modules=targets)
        model = peft.get_peft_model(model, lora).eval()
    prompts = [r["prompt"] for r in ultrafeedback_like_rows(opts.prompts, seed=1)]
    precision, why = auto_precision()
    bf16 = precision == "bf16"
    runs = variants(model, tokenizer, prompts, opts.new_tokens, opts.max_prompt)
    times: dict[str, list[float]] = {v: [] for v in chosen}
    tokens: dict[str, int] = {}
    warmup: dict[str, float] = {}
    with compute_precision(precision):
        for v in chosen:  # the compiled variant's warm-up is its compile
            t = time.perf_counter()
            runs[v]()
            warmup[v] = time.perf_counter() - t
        for _ in range(opts.reps):
            for v in chosen:
                t = time.perf_counter()
                tokens[v] = runs[v]()
                times[v].append(time.perf_counter() - t)
    rates = {v: [tokens[v] / s for s in times[v]] for v in chosen}
    rows = [
        f"Rollout of {opts.prompts} UltraFeedback-length prompts (<= {opts.max_prompt} tokens) "
        f"x {opts.new_tokens} new tokens, {'bf16 autocast' if bf16 else 'fp32'}, "
        f"{f'LoRA r={opts.lora}, ' if opts.lora else ''}"
        f"{torch.get_num_threads()} threads, median of {opts.reps} interleaved reps; {machine()}",
        "",
        "| variant | generated tok/s | vs ours | warm-up s |",
        "|---|---|---|---|",
    ]
    for v in chosen:
        ratio = median(rates[v]) / median(rates[chosen[0]])
        rows.append(f"| {v} | {spread(rates[v])} | {ratio:.2f}x | {warmup[v]:.1f} |")
    print("\n".join(rows))
    write_json(opts.out, {"rates": rates, "tokens": tokens, "warmup_s": warmup,
                          "settings": vars(opts) | {"policy": str(opts.policy)},
                          "bf16": bf16, "table": rows})  # fmt: skip


if __name__ == "__main__":
    main()
