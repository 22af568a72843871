"""Evaluation batches by rows or by tokens at 124M: the seed job's reward model (LoRA r=8, 512
tokens, 8 steps; `at_124m`'s seed job) evaluating 64 held-out pairs with the method's
defaults, `per_device_eval_batch_size=64` rows per batch with no token cap (what every run did
before `method.eval_batch_tokens`) against the default cap of 4,096 padded tokens. Loop time
(the end-of-training evaluation is inside it), peak RSS (wait4) and the held-out loss,
interleaved reps, into benchmarks/results/NAME.json; benchmarks/NOTES.md "Evaluation batches
capped by tokens" has the results.

    python benchmarks/eval_batch_124m.py --workspace /tmp/eval_batch --reps 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import at_124m  # noqa: E402
from common import Measured, interleaved_in, machine, run_py, spread, write_json  # noqa: E402

from rlhf_exp.config.schema import MAX_BATCH_TOKENS  # noqa: E402

# the seed job evaluates 8 pairs, 8 at a time, on both of its sides; here the defaults decide
SEED_EVAL = ("method.max_eval_samples", "method.per_device_eval_batch_size")
EVAL_PAIRS = 64
VARIANTS = {
    "rows-64": [f"method.eval_batch_tokens={MAX_BATCH_TOKENS}"],  # no cap: 64 pairs a batch
    "tokens-4096": [],  # the default cap: 4 pairs of 2 x 512 tokens a batch
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/eval_batch_124m"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--name", default="eval_batch_124m", help="results/NAME.json")
    opts = parser.parse_args()
    seed = at_124m.seed_ours_workspace(opts.workspace)
    args = [a for a in seed if not a.startswith(SEED_EVAL)]
    args.append(f"method.max_eval_samples={EVAL_PAIRS}")

    def runner(extra: list[str]) -> Callable[[Path], Measured]:
        return lambda run_dir: run_py([*args, *extra], run_dir, run_dir.with_suffix(".log"))

    runs = interleaved_in(
        opts.workspace / "eval_batch",
        {name: runner(extra) for name, extra in VARIANTS.items()},
        opts.reps,
    )
    results = {
        name: [
            {
                "loop_s": m.metrics["time/train_s"],
                "peak_rss_mb": m.peak_rss_mb,
                "eval_loss": m.metrics["eval/loss"],
                "train_loss": m.metrics["train/loss"],
            }
            for m in ms
        ]
        for name, ms in runs.items()
    }
    for name, rows in results.items():
        loops = spread([r["loop_s"] for r in rows])
        peaks = spread([r["peak_rss_mb"] for r in rows])
        print(
            f"{name:12s} loop s {loops:22s} peak RSS MB {peaks:24s} "
            f"eval loss {rows[0]['eval_loss']:.6f} train loss {rows[0]['train_loss']:.6f}"
        )
    write_json(opts.name, {"machine": machine(), "eval_pairs": EVAL_PAIRS, "runs": results})


if __name__ == "__main__":
    main()
