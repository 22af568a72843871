"""Where a run's memory goes: its resident memory over time, against what it was logging.

    python benchmarks/memory_timeline.py -- python run.py method=dpo ...

Runs the command from the project root, samples its RSS every 50 ms and prints, for each
stretch between two output lines, the largest RSS seen and the line that started it (so
"Computing reference log probs ... 1.6 GB" says which phase holds the memory). Only the
command's own process is sampled, not its children.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import threading
import time
from pathlib import Path

from common import ROOT, child_env


def rss_mb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples")
    opts = parser.parse_args()
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("give the command after --")

    proc = subprocess.Popen(
        command,
        cwd=ROOT,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    phase = ["(start)"]

    def follow_output() -> None:
        # Raw reads, not lines: a progress bar writes "\r" before each redraw, so a line reader
        # would hand over each redraw only when the next one starts, and every step's memory
        # would be put down to the step before it
        assert proc.stdout is not None
        pending = b""
        while chunk := os.read(proc.stdout.fileno(), 1 << 16):
            *done, pending = re.split(rb"[\r\n]", pending + chunk)
            texts = [t.strip() for t in (*done, pending) if t.strip()]
            if texts:
                phase[0] = texts[-1].decode(errors="replace")[:120]

    threading.Thread(target=follow_output, daemon=True).start()
    started = time.perf_counter()
    phases: list[list] = []  # [seconds at start, peak MB, line]
    while proc.poll() is None:
        mb = rss_mb(proc.pid)
        if mb is not None:
            if not phases or phases[-1][2] != phase[0]:
                phases.append([time.perf_counter() - started, mb, phase[0]])
            phases[-1][1] = max(phases[-1][1], mb)
        time.sleep(opts.interval)
    for seconds, mb, line in phases:
        print(f"{seconds:7.1f} s {mb:6d} MB  {line}")
    peak = max((p[1] for p in phases), default=0)
    print(f"peak {peak} MB, exit code {proc.returncode}")
    raise SystemExit(proc.returncode)


if __name__ == "__main__":
    main()
