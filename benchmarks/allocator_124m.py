"""The seed job's "ours" side at 124M under another allocator: glibc's malloc (with the phase
trims of rlhf_exp.memory), glibc limited to one or two arenas or with a fixed mmap threshold,
oneDNN's primitive cache capped, and jemalloc by `LD_PRELOAD` with its defaults and two
settings. Loop time and peak RSS (wait4), interleaved reps, into benchmarks/results/NAME.json;
benchmarks/NOTES.md "jemalloc instead of glibc's malloc", "Fewer malloc arenas, a bf16 frozen
base", "A fixed glibc mmap threshold" and "oneDNN's primitive cache" have the results.

    apt-get install libjemalloc2   # for the jemalloc variants only
    python benchmarks/allocator_124m.py --workspace /tmp/alloc --reps 2
    python benchmarks/allocator_124m.py --variants glibc,glibc-one-arena,glibc-two-arenas \
        --name allocator_124m_arenas

Builds the one-step SFT policy and the UltraFeedback-length file in the workspace once
(`at_124m`'s seed job), then runs the reward model with LoRA r=8 at 512 tokens, 8 steps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import at_124m  # noqa: E402
from common import Measured, child_env, interleaved_in, machine, run_py, write_json  # noqa: E402


def _fixed_mmap_threshold(mib: int) -> dict[str, str]:
    """glibc's mmap threshold fixed at `mib`: its own rises to the largest block freed (up to
    32 MB), and the tensors under it then fragment the heap. A trim threshold of 1 GiB leaves
    the heap's top to the phase trims instead of shrinking and regrowing it inside a step."""
    return {"MALLOC_MMAP_THRESHOLD_": str(mib << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
VARIANTS = {
    "glibc": {},
    # one heap for every thread: torch's OpenMP workers otherwise free into arenas of their own
    "glibc-one-arena": {"MALLOC_ARENA_MAX": "1"},
    "glibc-two-arenas": {"MALLOC_ARENA_MAX": "2"},
    "glibc-mmap-4mb": _fixed_mmap_threshold(4),
    "glibc-mmap-8mb": _fixed_mmap_threshold(8),
    # oneDNN keeps up to 1,024 matmul primitives (with their buffers) by default; with dynamic
    # padding nearly every micro-batch has new shapes, so few are ever used again
    "onednn-cache-128": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "128"},
    "onednn-cache-64": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"},
    # torch's CPU allocator madvises tensors of 2 MB and more for transparent huge pages
    # (`THP_MEM_ALLOC_ENABLE`): one page fault per 2 MB instead of 512
    "thp-off": {"THP_MEM_ALLOC_ENABLE": "0"},
    "thp-on": {"THP_MEM_ALLOC_ENABLE": "1"},
    "jemalloc": {"LD_PRELOAD": JEMALLOC},
    "jemalloc-background-thread": {"LD_PRELOAD": JEMALLOC, "MALLOC_CONF": "background_thread:true"},
    "jemalloc-no-decay": {
        "LD_PRELOAD": JEMALLOC,
        "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1",
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", type=Path, default=Path("/tmp/allocator_124m"))
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--name", default="allocator_124m", help="results/NAME.json")
    opts = parser.parse_args()
    chosen = opts.variants.split(",")
    unknown = set(chosen) - set(VARIANTS)
    if unknown:
        parser.error(f"--variants {','.join(sorted(unknown))}: choose from {', '.join(VARIANTS)}")
    if any("LD_PRELOAD" in VARIANTS[name] for name in chosen) and not Path(JEMALLOC).is_file():
        sys.exit(f"no {JEMALLOC}: install Debian's libjemalloc2")
    args = at_124m.seed_ours_workspace(opts.workspace)

    def runner(name: str) -> Callable[[Path], Measured]:
        env = child_env(**VARIANTS[name])
        return lambda run_dir: run_py(args, run_dir, run_dir.with_suffix(".log"), env=env)

    runs = interleaved_in(opts.workspace, {name: runner(name) for name in chosen}, opts.reps)
    results = {
        name: [{"loop_s": m.metrics["time/train_s"], "peak_rss_mb": m.peak_rss_mb} for m in ms]
        for name, ms in runs.items()
    }
    for name, rows in results.items():
        loops = ", ".join(f"{r['loop_s']:.1f}" for r in rows)
        peaks = ", ".join(f"{r['peak_rss_mb']:,.0f}" for r in rows)
        print(f"{name:28s} loop s {loops:20s} peak RSS MB {peaks}")
    write_json(opts.name, {"machine": machine(), "runs": results})


if __name__ == "__main__":
    main()
