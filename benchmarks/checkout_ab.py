"""What a code change does to a 124M job: the job run from another checkout and from this
one, interleaved. Loop time, peak RSS (wait4) and what the runs learned, into
benchmarks/results/NAME.json.

    git worktree add /tmp/before HEAD~1
    python benchmarks/checkout_ab.py --job seed --before /tmp/before --name seed_job_ab_gelu
    python benchmarks/checkout_ab.py --job ppo-long --before /tmp/before --reps 2 \
        --name ppo_long_prompts_124m

Jobs (`at_124m`):
  seed      the seed job's "ours" side: reward model, LoRA r=8, 512 tokens, 8 steps
  ppo-long  PPO from the seed job's SFT policy and reward model on UltraFeedback-length
            prompts (512-token budget), one iteration of the method's defaults
  sft-long, dpo-long  SFT / DPO on UltraFeedback-length rows, 2 steps
  ppo-embedded, sft-embedded, reward-embedded, dpo-embedded  the `mfu_124m` job of that method (the
            embedded task); ppo-embedded-long: 12 iterations instead of 3

Each side runs its own run.py and rlhf_exp (a script's directory comes first on sys.path).
The upstream models, the UltraFeedback-length file and the tokenised data are built once, by
this checkout, into the workspace, so both sides train the same model on the same rows.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import at_124m  # noqa: E402
from common import ROOT, Measured, interleaved_in, machine, run_py, spread, write_json  # noqa: E402

# job: (its overrides, built in a workspace; the metrics.json keys that say what it learned)
JOBS = {
    "seed": (at_124m.seed_ours_workspace, ("train/loss", "eval/accuracy")),
    "ppo-long": (
        at_124m.ppo_long_prompts_workspace,
        ("train/loss", "time/rollout_total_s", "time/update_total_s", "objective/scores"),
    ),
    "sft-long": (at_124m.sft_long_rows_workspace, ("train/loss", "eval/loss")),
    "dpo-long": (at_124m.dpo_long_pairs_workspace, ("train/loss", "eval/loss")),
    "ppo-embedded": (
        at_124m.embedded_workspace("ppo"),
        ("train/loss", "time/rollout_total_s", "time/update_total_s", "objective/scores"),
    ),
    # 12 PPO iterations: time for khugepaged to refill what the trims between phases return
    "ppo-embedded-long": (
        at_124m.embedded_workspace("ppo", "method.max_steps=12"),
        ("train/loss", "time/rollout_total_s", "time/update_total_s", "objective/scores"),
    ),
    "sft-embedded": (at_124m.embedded_workspace("sft"), ("train/loss", "eval/loss")),
    "sft-embedded-40": (
        at_124m.embedded_workspace("sft", "method.max_steps=40", "method.num_train_epochs=100"),
        ("train/loss", "eval/loss"),
    ),
    "reward-embedded": (at_124m.embedded_workspace("reward"), ("train/loss", "eval/accuracy")),
    "dpo-embedded": (at_124m.embedded_workspace("dpo"), ("train/loss", "eval/loss")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--job", choices=sorted(JOBS), default="seed")
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/checkout_ab"))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--name", default="checkout_ab", help="results/NAME.json")
    opts = parser.parse_args()
    if not (opts.before / "run.py").is_file():
        sys.exit(f"--before {opts.before}: no run.py there; pass a checkout of this repository")
    workspace, learned = JOBS[opts.job]
    args = workspace(opts.workspace)

    checkouts = {"before": opts.before.resolve(), "after": ROOT}

    def runner(checkout: Path) -> Callable[[Path], Measured]:
        return lambda run_dir: run_py(args, run_dir, run_dir.with_suffix(".log"), cwd=checkout)

    runs = interleaved_in(
        opts.workspace / opts.job,
        {side: runner(path) for side, path in checkouts.items()},
        opts.reps,
    )
    results = {
        side: [
            {
                "loop_s": m.metrics["time/train_s"],
                "peak_rss_mb": m.peak_rss_mb,
                **{key: m.metrics[key] for key in learned},
            }
            for m in ms
        ]
        for side, ms in runs.items()
    }
    for side, rows in results.items():
        loops = spread([r["loop_s"] for r in rows])
        peaks = spread([r["peak_rss_mb"] for r in rows])
        said = ", ".join(f"{key} {rows[0][key]:.4g}" for key in learned)
        print(f"{side:7s} loop s {loops:22s} peak RSS MB {peaks:24s} {said}")
    payload = {"machine": machine(), "job": opts.job, "before": str(opts.before), "runs": results}
    write_json(opts.name, payload)


if __name__ == "__main__":
    main()
