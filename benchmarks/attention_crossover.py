"""Where eager attention stops beating SDPA on CPU: one forward + backward of GPT-2 small's
shape (124M, random init, bf16 autocast) at a fixed token budget, rows of each length, with
`attn_implementation="eager"` and `"sdpa"` alternating.

    python benchmarks/attention_crossover.py                       # 4,096 tokens per batch
    python benchmarks/attention_crossover.py --lengths 64 256 --tokens 2048 --reps 5

Prints seconds per forward + backward (median of --reps after one warm-up) and eager's speed
against SDPA's for each length. benchmarks/NOTES.md, "Attention by row length", has results.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import rlhf_exp  # noqa: F401  (before torch: it sets THP_MEM_ALLOC_ENABLE, read once)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import machine  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from rlhf_exp.models.loading import fuse_gelu_tanh  # noqa: E402


def seconds(model: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor | None) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        hidden = model.transformer(input_ids=ids, attention_mask=mask, use_cache=False)
        hidden = hidden.last_hidden_state
    hidden.float().pow(2).mean().backward()  # the trunk only: the head is the same either way
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64, 128, 256, 384, 512])
    parser.add_argument("--tokens", type=int, default=4096, help="rows x length per batch")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--padded",
        action="store_true",
        help="left-pad row i by i %% 8 tokens, as batches of prompts are (an explicit mask)",
    )
    opts = parser.parse_args()
    torch.manual_seed(0)
    config = GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    models = {}
    for attn in ("eager", "sdpa"):
        # a config of its own: GPT-2's attention reads the implementation from its config at
        # every forward, so two models sharing one config both ran the last one set (SDPA)
        own = copy.deepcopy(config)
        own._attn_implementation = attn
        models[attn] = GPT2LMHeadModel(own).train(False)
        fuse_gelu_tanh(models[attn])
    assert [m.config._attn_implementation for m in models.values()] == ["eager", "sdpa"]
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    padded = ", left-padded rows" if opts.padded else ""
    print(f"{machine()}; {opts.tokens} tokens per batch{padded}, forward + backward of the trunk")
    print("| tokens per row | rows | eager s | SDPA s | eager's speed |")
    print("|---|---|---|---|---|")
    for length in opts.lengths:
        rows = max(1, opts.tokens // length)
        ids = torch.randint(0, config.vocab_size, (rows, length))
        mask = None
        if opts.padded:
            mask = torch.ones_like(ids)
            for i in range(rows):
                mask[i, : i % 8] = 0
        times: dict[str, list[float]] = {"eager": [], "sdpa": []}
        for attn in times:  # warm-up: oneDNN's primitives for these shapes
            seconds(models[attn], ids, mask)
        for _ in range(opts.reps):
            for attn in times:
                times[attn].append(seconds(models[attn], ids, mask))
        eager, sdpa = (statistics.median(times[a]) for a in ("eager", "sdpa"))
        print(f"| {length} | {rows} | {eager:.3f} | {sdpa:.3f} | {sdpa / eager:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
