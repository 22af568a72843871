"""Peak memory of DPO with and without LoRA: the same config, interleaved runs in subprocesses.

    python benchmarks/dpo_lora_memory.py                      # 3 reps each, prints medians
    python benchmarks/dpo_lora_memory.py --reps 5 -- method.precompute_ref_log_probs=true

Each run is `python run.py method=dpo debug=fast lora=<none|default> ...` in its own process;
its peak resident set size comes from `wait4` (the kernel's max RSS of that child alone).
Runs alternate none/default so drift on a shared machine (other jobs, page cache) hits both
alike. One untimed warm-up per setting first builds the tiny base and the SFT upstream (LoRA
runs start from a LoRA-trained SFT policy, a separate cache entry), so measured runs only
load them. Reference log-probs are not precomputed by default here: precomputing scores the
whole training set (minutes), and without it the no-LoRA run holds the frozen reference copy
that LoRA avoids, which is the comparison the issue asks for. The model is a wider tiny GPT-2
(~14M parameters): at the 0.6M default, weights, gradients and Adam state would vanish in the
~600 MB the libraries take.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ["model.tiny.n_layer=4", "model.tiny.n_embd=512", "model.tiny.n_head=8"]
SMALL = [
    "method.max_steps=10",
    "method.eval_steps=1000",  # no mid-run evaluation: one training loop is what we measure
    "eval.num_prompts=8",
    "logger=none",
    "method.precompute_ref_log_probs=false",
    "upstream.sft.overrides.max_steps=2",  # any SFT policy will do as a starting point
]


def peak_rss_mb(args: list[str], log: Path) -> float:
    """Run `args` to completion; peak RSS of that process in MB (raises if it failed)."""
    with log.open("w") as out:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}); see {log}")
    return usage.ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="measured runs per setting")
    parser.add_argument("--work", type=Path, help="run dir root to reuse (default: a new tmp dir)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run")
    opts = parser.parse_args()

    work = opts.work or Path(tempfile.mkdtemp(prefix="dpo_lora_memory_"))
    # Later values win, so a user's override replaces a default for the same key.
    overrides = dict(o.split("=", 1) for o in [*MODEL, *SMALL, *opts.overrides])
    base = [sys.executable, str(ROOT / "run.py"), "method=dpo", "debug=fast"]
    base += [f"paths.root_dir={work}", *(f"{k}={v}" for k, v in overrides.items())]
    settings = ("none", "default")

    def run(lora: str, tag: str) -> float:
        return peak_rss_mb([*base, f"lora={lora}"], work / f"{tag}_{lora}.log")

    for lora in settings:
        print(f"warm-up lora={lora}: {run(lora, 'warmup'):.0f} MB (not counted)", flush=True)
    peaks: dict[str, list[float]] = {lora: [] for lora in settings}
    for rep in range(opts.reps):
        for lora in settings:
            peaks[lora].append(run(lora, f"rep{rep}"))
            print(f"rep {rep} lora={lora}: {peaks[lora][-1]:.0f} MB", flush=True)

    medians = {lora: statistics.median(values) for lora, values in peaks.items()}
    print(f"\npeak RSS, MB (median of {opts.reps} interleaved runs; logs in {work})")
    for lora in settings:
        runs = ", ".join(f"{v:.0f}" for v in peaks[lora])
        print(f"  lora={lora:<8} median {medians[lora]:7.0f}   runs: {runs}")
    saved = medians["none"] - medians["default"]
    ratio = medians["default"] / medians["none"]
    print(f"  lora=default / lora=none = {ratio:.3f}  ({saved:+.0f} MB saved by LoRA)")


if __name__ == "__main__":
    main()
