"""TRL's fused LM head on CPU alone: TRL's `ChunkedLogProbFunction` (its torch fallback for
devices without Triton) against ours (`rlhf_exp.lm_head.CpuFusedLogProbs`) at GPT-2 small's
head (768 x 50,257), bf16 autocast, SFT's outputs (log-probs, entropy, top-1), one forward and
backward of N labelled positions. Each function runs in its own process, the two interleaved
with the order reversed every round; seconds per call (median of 3 calls after a warm-up),
peak RSS, and how far ours is from TRL's.

    python benchmarks/lm_head_cpu.py --tokens 2048 --reps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PYTHON, machine, median, spread, write_json  # noqa: E402

HIDDEN, VOCAB = 768, 50257
OUTPUTS = ("log_probs", "entropy", "is_top1")


def one(which: str, tokens: int, out: Path) -> None:
    """Time `which` ("trl" or "ours") and save what it computed to `out`."""
    import torch

    from rlhf_exp import lm_head

    function = lm_head._trl_function if which == "trl" else lm_head.CpuFusedLogProbs
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(VOCAB, HIDDEN) * 0.02)
    hidden = torch.randn(tokens, HIDDEN)  # fp32, as GPT-2's final layer norm hands it on
    targets = torch.randint(0, VOCAB, (tokens,))

    def call() -> tuple[torch.Tensor, ...]:
        weight.grad = None
        h = hidden.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logprobs, entropy, _, _, top1 = function.apply(
                h, weight, None, targets, 1.0, 32768, None, 1.0, OUTPUTS
            )
        (-logprobs.mean()).backward()
        return logprobs.detach(), entropy.detach(), top1, h.grad, weight.grad

    call()
    seconds = []
    for _ in range(3):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
    names = ("logprobs", "entropy", "top1", "d_hidden", "d_weight")
    torch.save(dict(zip(names, result, strict=True)), out)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"s_per_call": median(seconds), "peak_rss_mb": peak_mb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lm_head_cpu"))
    parser.add_argument("--name", default="lm_head_cpu", help="results/NAME.json")
    parser.add_argument("--one", choices=("trl", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.one:
        one(opts.one, opts.tokens, opts.out)
        return
    opts.work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"trl": [], "ours": []}
    for rep in range(opts.reps):
        for which in ("trl", "ours") if rep % 2 == 0 else ("ours", "trl"):
            out = opts.work / f"{which}.pt"
            line = subprocess.run(
                [PYTHON, __file__, "--one", which, "--tokens", str(opts.tokens), "--out", out],
                check=True, capture_output=True, text=True,
            ).stdout.strip().splitlines()[-1]  # fmt: skip
            runs[which].append(json.loads(line))
            print(f"  {which} rep {rep}: {runs[which][-1]['s_per_call']:.3f} s", flush=True)

    import torch

    trl, ours = (torch.load(opts.work / f"{w}.pt", weights_only=True) for w in ("trl", "ours"))
    differences = {
        key: float((ours[key].float() - trl[key].float()).abs().max() / trl[key].abs().max())
        for key in ("logprobs", "entropy", "d_hidden", "d_weight")
    }
    seconds = {w: [r["s_per_call"] for r in rs] for w, rs in runs.items()}
    results = {
        "machine": machine(),
        "tokens": opts.tokens,
        "head": f"{HIDDEN} x {VOCAB}, bf16 autocast, outputs {OUTPUTS}",
        "s_per_call": {w: spread(s) for w, s in seconds.items()},
        "speedup": median(seconds["trl"]) / median(seconds["ours"]),
        "peak_rss_mb": {w: spread([r["peak_rss_mb"] for r in rs]) for w, rs in runs.items()},
        "max_difference_relative_to_trls_largest": differences,
        "top1_equal": bool(torch.equal(ours["top1"], trl["top1"])),
        "runs": runs,
    }
    print(json.dumps(results, indent=1))
    print("wrote", write_json(opts.name, results))


if __name__ == "__main__":
    main()
