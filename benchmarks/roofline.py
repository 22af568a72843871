"""Sustained matmul throughput of this machine, in fp32 and bf16, at a model's own shapes.

    python benchmarks/roofline.py                 # tiny and small model shapes
    python benchmarks/roofline.py --d-model 768   # any width

A transformer's FLOPs are almost all in four matmul shapes per layer: tokens x d by d x 3d
(fused QKV), d x d (attention output), d x 4d and 4d x d (MLP), plus tokens x d by d x vocab
(LM head). The roofline of a model is the best sustained rate over those shapes: what its
training could reach if nothing but matmuls ran. MFU divides achieved model FLOP/s by it.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

TOKENS = 2048  # a batch of 32 sequences of 64 tokens: the benchmark runs' order of size


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Median GFLOP/s of `(m x k) @ (k x n)` over repeated timed blocks of about `seconds`."""
    a = torch.randn(m, k, dtype=dtype)
    b = torch.randn(k, n, dtype=dtype)
    for _ in range(3):  # warm-up: thread pool, oneDNN kernel selection
        a @ b
    rates = []
    for _ in range(5):
        calls, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds / 5:
            a @ b
            calls += 1
        rates.append(2 * m * k * n * calls / elapsed / 1e9)
    return sorted(rates)[len(rates) // 2]


def model_shapes(d_model: int, vocab: int) -> dict[str, tuple[int, int, int]]:
    return {
        "qkv": (TOKENS, d_model, 3 * d_model),
        "attn_out": (TOKENS, d_model, d_model),
        "mlp_up": (TOKENS, d_model, 4 * d_model),
        "mlp_down": (TOKENS, 4 * d_model, d_model),
        "lm_head": (TOKENS, d_model, vocab),
    }


def roofline(d_model: int, vocab: int) -> dict[str, dict[str, float]]:
    """{dtype: {shape name: GFLOP/s, "peak": best of them}} for fp32 and bf16."""
    out: dict[str, dict[str, float]] = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = {
            shape: matmul_gflops(*dims, dtype)
            for shape, dims in model_shapes(d_model, vocab).items()
        }
        out[name] = rates | {"peak": max(rates.values())}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-model", type=int, nargs="*", default=[128, 512])
    parser.add_argument("--vocab", type=int, default=2048)
    opts = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for d in opts.d_model:
        print(f"d_model={d}:", json.dumps(roofline(d, opts.vocab), indent=1))


if __name__ == "__main__":
    main()
