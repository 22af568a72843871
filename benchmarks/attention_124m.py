"""SDPA against GPT-2's eager attention in 124M jobs: each job of `checkout_ab.py` run with
`model.attn_implementation=sdpa` and `=eager` (or the `--kernels` given), interleaved. Loop
time (PPO: rollout and update too), peak RSS (wait4) and what the runs learned, into
benchmarks/results/NAME.json.

    python benchmarks/attention_124m.py --jobs sft-embedded ppo-embedded sft-long --reps 2
    python benchmarks/attention_124m.py --jobs reward-embedded --kernels sdpa auto

transformers picks SDPA when `model.attn_implementation` is unset; on CPU, SDPA's fused
kernel's backward is slow on short rows, and a dropout probability sends it to its math path.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout_ab import JOBS  # noqa: E402
from common import Measured, interleaved_in, machine, run_py, spread, write_json  # noqa: E402

TIMES = ("time/train_s", "time/rollout_total_s", "time/update_total_s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", nargs="+", choices=sorted(JOBS), required=True)
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/attention_124m"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--name", default="attention_124m", help="results/NAME.json")
    parser.add_argument(
        "--kernels", nargs="+", default=["sdpa", "eager"], help="model.attn_implementation values"
    )
    opts = parser.parse_args()
    results: dict[str, dict] = {}
    for job in opts.jobs:
        workspace, learned = JOBS[job]
        args = workspace(opts.workspace)

        def runner(attention: str, args: list[str] = args) -> Callable[[Path], Measured]:
            overrides = [*args, f"model.attn_implementation={attention}"]

            def run(run_dir: Path) -> Measured:
                measured = run_py(overrides, run_dir, run_dir.with_suffix(".log"))
                shutil.rmtree(run_dir)  # a 124M run's checkpoints: GBs each, the log stays
                return measured

            return run

        print(f"== {job}", flush=True)
        runs = interleaved_in(opts.workspace / job, {a: runner(a) for a in opts.kernels}, opts.reps)
        results[job] = {
            attention: [
                {
                    "peak_rss_mb": m.peak_rss_mb,
                    **{key: m.metrics[key] for key in (*TIMES, *learned) if key in m.metrics},
                }
                for m in ms
            ]
            for attention, ms in runs.items()
        }
        for attention, rows in results[job].items():
            times = ", ".join(
                f"{key.split('/')[1]} {spread([r[key] for r in rows])}"
                for key in TIMES
                if key in rows[0]
            )
            peaks = spread([r["peak_rss_mb"] for r in rows])
            said = ", ".join(f"{key} {rows[0][key]:.4g}" for key in learned)
            print(f"{attention:6s} {times}; peak RSS MB {peaks}; {said}", flush=True)
        write_json(opts.name, {"machine": machine(), "jobs": results})  # after every job


if __name__ == "__main__":
    main()
