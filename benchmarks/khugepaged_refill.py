"""Does khugepaged refill heap memory that `release_freed_memory` handed back? Prints, per
setting, what a fresh process holds after training-like allocations and a fragmented heap's
trim: heap ranges advised for huge pages, RSS right after the trim and after a wait.

glibc's mmap threshold rises to the largest block freed (up to 32 MB), so torch's 2-32 MB
tensors come from the heap; with `THP_MEM_ALLOC_ENABLE=1` torch advises `MADV_HUGEPAGE` for
them, and the advice stays on those heap ranges after the tensors are freed. khugepaged may
then collapse a trimmed range back into a whole 2 MB page (up to `max_ptes_none` of its 512
small pages absent). Usage: `python benchmarks/khugepaged_refill.py [--wait 25]`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

PROBE = r"""
import random, re, sys, time
import rlhf_exp  # first, as run.py does
import torch
from rlhf_exp.memory import current_rss_bytes, release_freed_memory

def held() -> str:
    advised = huge = 0
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", open("/proc/self/smaps").read()):
        span = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", block)
        if " hg" in re.search(r"VmFlags:(.*)", block).group(1):
            advised += int(span.group(2), 16) - int(span.group(1), 16)
        huge += int(re.search(r"AnonHugePages:\s+(\d+)", block).group(1)) << 10
    return f"{current_rss_bytes() >> 20} {advised >> 20} {huge >> 20}"

random.seed(0)
live = []
for _ in range(400):  # tensors of 1-30 MB, some kept, some freed, as in a training step
    live.append(torch.ones(random.choice([1, 2, 3, 4, 6, 9, 12, 24, 30]) << 18))
    if len(live) > 20:
        live.pop(random.randrange(len(live)))
del live
big, kept = [], []  # 64 KiB blocks freed between 1 KiB ones kept: a fragmented heap
for _ in range(3000):
    big.append(torch.ones(16_384))
    kept.append(torch.ones(256))
del big
release_freed_memory()
print(held())
time.sleep(float(sys.argv[1]))
print(held())
"""

SETTINGS = {
    "huge pages off": {"THP_MEM_ALLOC_ENABLE": "0"},
    "huge pages on (default)": {"THP_MEM_ALLOC_ENABLE": "1"},
    "on, mmap threshold 2 MB": {"THP_MEM_ALLOC_ENABLE": "1", "MALLOC_MMAP_THRESHOLD_": "2097152"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wait", type=float, default=25.0, help="seconds for khugepaged")
    opts = parser.parse_args()
    khugepaged = Path("/sys/kernel/mm/transparent_hugepage/khugepaged")
    knobs = ("scan_sleep_millisecs", "pages_to_scan", "max_ptes_none")
    print("khugepaged:", ", ".join(f"{k} {(khugepaged / k).read_text().strip()}" for k in knobs))
    print(f"| setting | RSS MB after trim | after {opts.wait:.0f} s | advised MB | huge MB after |")
    print("|---|---|---|---|---|")
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("THP_", "MALLOC_"))}
    for name, env in SETTINGS.items():
        out = subprocess.run(
            [sys.executable, "-c", PROBE, str(opts.wait)],
            env=clean | env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        rss0, _, _, rss1, advised, huge = map(int, out)
        print(f"| {name} | {rss0} | {rss1} | {advised} | {huge} |", flush=True)


if __name__ == "__main__":
    main()
