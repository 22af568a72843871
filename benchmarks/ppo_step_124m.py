"""One PPO update step at 124M in isolation: forward, backward and optimiser seconds, and the
minor page faults each step takes, for our `PolicyAndValue` (GPT-2 shape from config, random
init, GELU fused as every loaded model, bf16 autocast, fused AdamW). No data, no rollout: the
loss is the response log-probs' mean plus the values' square, enough for every gradient.

    python benchmarks/ppo_step_124m.py                       # 16 rows x (40 + 24) tokens
    THP_MEM_ALLOC_ENABLE=0 python benchmarks/ppo_step_124m.py --rows 32
    python benchmarks/ppo_step_124m.py --critic value_head --profile   # + torch's op table
    python benchmarks/ppo_step_124m.py --attn eager          # GPT-2's own attention, not SDPA
    python benchmarks/ppo_step_124m.py --attn eager --heap --by-kind   # as PPO's update runs

Run each setting in its own process: torch reads THP_MEM_ALLOC_ENABLE once. benchmarks/NOTES.md
"Huge pages for large tensors" has the results.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import rlhf_exp  # noqa: F401  (before torch: it sets THP_MEM_ALLOC_ENABLE, read once)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import machine  # noqa: E402
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel  # noqa: E402

from rlhf_exp.memory import heap_reused  # noqa: E402
from rlhf_exp.methods.ppo.models import PolicyAndValue  # noqa: E402
from rlhf_exp.models.loading import fuse_gelu_tanh  # noqa: E402
from rlhf_exp.rl import response_logprobs  # noqa: E402


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens per row")
    parser.add_argument("--response", type=int, default=24, help="response tokens per row")
    parser.add_argument("--critic", choices=("separate", "value_head"), default="separate")
    parser.add_argument("--steps", type=int, default=7, help="the first is not counted")
    parser.add_argument("--profile", action="store_true", help="one more step under the profiler")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each model (step 0 compiles)"
    )
    parser.add_argument("--attn", choices=("sdpa", "eager"), default="sdpa", help="attention")
    parser.add_argument(
        "--heap", action="store_true", help="inside rlhf_exp.memory.heap_reused, as PPO's update"
    )
    parser.add_argument(
        "--by-kind", action="store_true", help="one more profiled step: time by kind of op"
    )
    opts = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024,
                        num_labels=1, pad_token_id=0)  # fmt: skip
    config._attn_implementation = opts.attn
    policy = GPT2LMHeadModel(config)
    critic = GPT2ForSequenceClassification(config) if opts.critic == "separate" else None
    for model in (policy, critic):
        if model is not None:
            fuse_gelu_tanh(model)
            if opts.compile:
                model.compile()  # in place: forward runs compiled, state_dict keeps its names
    module = PolicyAndValue(policy, critic, config.n_embd).eval()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(1, config.vocab_size, (opts.rows, opts.prompt + opts.response))
    attention = torch.ones_like(ids)

    def step() -> tuple[float, float, float]:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, values = module(ids, attention, opts.response)
            logprobs = response_logprobs(logits, ids[:, opts.prompt :], 1.0, 0)
            loss = -logprobs.mean() + 0.1 * values.float().pow(2).mean()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    thp = os.environ.get("THP_MEM_ALLOC_ENABLE")
    shape = f"{opts.rows} x ({opts.prompt} + {opts.response}) tokens"
    compiled = ", compiled" if opts.compile else ""
    print(f"{machine()}; THP_MEM_ALLOC_ENABLE={thp}; {shape}, critic {opts.critic}{compiled}, "
          f"{policy.config._attn_implementation} attention")  # fmt: skip
    totals = []
    with heap_reused() if opts.heap else contextlib.nullcontext() as heap:
        steps(opts, step, totals, heap)
        if opts.by_kind:
            print_by_kind(step)


def steps(opts: argparse.Namespace, step, totals: list[float], heap) -> None:
    for i in range(opts.steps):
        before = faults()
        forward, backward, optim = step()
        if heap is not None:  # as PPO's update tells it after each optimiser step
            heap.step_done()
        totals.append(forward + backward + optim)
        print(f"step {i}: forward {forward:.3f} s, backward {backward:.3f} s, optimiser "
              f"{optim:.3f} s, {faults() - before:,} page faults", flush=True)  # fmt: skip

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"median step {statistics.median(totals[1:]):.3f} s (steps 1-{opts.steps - 1}), "
          f"peak RSS {peak_mb:,.0f} MB")  # fmt: skip
    if opts.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            step()
        table = prof.key_averages(group_by_input_shape=True)
        print(table.table(sort_by="self_cpu_time_total", row_limit=30, max_shapes_column_width=60))


# aten ops by what they do; anything else is elementwise (activations, norms, adds, softmax)
KINDS = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "fused attention": ("aten::_scaled_dot_product",),
    "optimiser": ("aten::_fused_adamw_",),
    "casts and copies": ("aten::copy_", "aten::_to_copy"),
    "zero fills": ("aten::fill_", "aten::zero_"),
}


def kind_of(name: str) -> str:
    return next((k for k, prefixes in KINDS.items() if name.startswith(prefixes)), "elementwise")


def print_by_kind(step) -> None:
    """One step under the profiler: self time by kind of op, and the matmuls' FLOP rate (the
    rate an MFU could reach if nothing but those matmuls ran)."""
    from torch.profiler import ProfilerActivity, profile, schedule

    # a step with the profiler on before the measured one: the profiler's own first
    # allocations split the heap's freed blocks, and the next step faults their pages in again
    walls, measured = [], []
    plan = schedule(wait=0, warmup=1, active=1)
    with profile(
        activities=[ProfilerActivity.CPU],
        with_flops=True,
        schedule=plan,
        on_trace_ready=lambda prof: measured.extend(prof.key_averages()),
    ) as prof:
        for _ in range(2):
            before = faults()
            walls.append(sum(step()))
            prof.step()
    wall, step_faults = walls[-1], faults() - before
    seconds: dict[str, float] = {}
    flops = 0
    for event in measured:
        if not event.key.startswith("aten::"):
            continue
        kind = kind_of(event.key)
        seconds[kind] = seconds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        flops += event.flops if kind == "matmul" else 0
    total = sum(seconds.values())
    print(f"profiled step: {wall:.3f} s wall, {total:.3f} s in aten ops, {step_faults:,} faults")
    for kind, s in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {kind:18s} {s:6.3f} s  {100 * s / wall:5.1f}%")
    rate = flops / seconds["matmul"] / 1e9
    print(f"matmuls: {flops / 1e12:.2f} TFLOP at {rate:,.0f} GFLOP/s while the step ran")


if __name__ == "__main__":
    main()
