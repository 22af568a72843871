"""Training micro-batches by rows or by tokens at 124M: SFT with its defaults (32 rows per step
in one micro-batch) on UltraFeedback-length dialogues at max_length 512, 2 steps, with no token
cap (what every run did before `method.train_batch_tokens`) against the default cap of 4,096
padded tokens (32 rows as 4 x 8). Loop time, peak RSS (wait4) and the losses, interleaved
reps, into benchmarks/results/NAME.json; benchmarks/NOTES.md "Batches capped by tokens" has
the results.

    python benchmarks/train_batch_124m.py --workspace /tmp/train_batch --reps 2

A run is given at most `--address-space-gb` of address space (`prlimit --as`), so a variant
that would take the machine's memory fails alone, with torch's allocation error, instead of
waking the kernel's OOM killer; a failed run is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import at_124m  # noqa: E402
from common import PYTHON, interleaved_in, machine, run_measured, spread, write_json  # noqa: E402

from rlhf_exp.config.schema import MAX_BATCH_TOKENS  # noqa: E402

STEPS = 2
VARIANTS = {
    "rows-32": [f"method.train_batch_tokens={MAX_BATCH_TOKENS}"],  # no cap: 32 x 512 at once
    "tokens-4096": [],  # the default cap: 8 rows of up to 512 tokens, 4 micro-batches a step
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/train_batch_124m"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--address-space-gb", type=int, default=20)
    parser.add_argument("--name", default="train_batch_124m", help="results/NAME.json")
    opts = parser.parse_args()
    ws = SimpleNamespace(root=opts.workspace)
    opts.workspace.mkdir(parents=True, exist_ok=True)
    args = [
        *at_124m._base(ws),
        *at_124m._seed_data(ws),
        *at_124m._budget(512),
        "method=sft",
        f"method.max_steps={STEPS}",
        *at_124m.QUIET,
    ]
    limit = ["prlimit", f"--as={opts.address_space_gb << 30}"]

    def runner(name: str) -> Callable[[Path], Any]:
        def run(run_dir: Path) -> Any:
            command = [*limit, PYTHON, "run.py", *args, *VARIANTS[name]]
            command.append(f"hydra.run.dir={run_dir}")
            try:
                m = run_measured(command, run_dir.with_suffix(".log"))
            except RuntimeError as err:
                print(f"  {name}: failed: {err}", flush=True)
                return SimpleNamespace(wall_s=float("nan"), failed=str(err)[-300:])
            m.metrics = json.loads((run_dir / "metrics.json").read_text())
            return m

        return run

    runs = interleaved_in(
        opts.workspace / "train_batch", {name: runner(name) for name in VARIANTS}, opts.reps
    )
    results: dict[str, list[dict[str, Any]]] = {}
    for name, ms in runs.items():
        results[name] = [
            {"failed": m.failed}
            if hasattr(m, "failed")
            else {
                "loop_s": m.metrics["time/train_s"],
                "peak_rss_mb": m.peak_rss_mb,
                "train_loss": m.metrics["train/loss"],
                "eval_loss": m.metrics["eval/loss"],
            }
            for m in ms
        ]
    for name, rows in results.items():
        ok = [r for r in rows if "failed" not in r]
        if not ok:
            print(f"{name:12s} every run failed: {rows[0]['failed']}")
            continue
        loops = spread([r["loop_s"] for r in ok])
        peaks = spread([r["peak_rss_mb"] for r in ok])
        print(
            f"{name:12s} loop s {loops:22s} peak RSS MB {peaks:24s} train loss "
            f"{ok[0]['train_loss']:.6f} eval loss {ok[0]['eval_loss']:.6f} "
            f"({len(rows) - len(ok)} failed)"
        )
    write_json(
        opts.name,
        {"machine": machine(), "address_space_gb": opts.address_space_gb, "runs": results},
    )


if __name__ == "__main__":
    main()
