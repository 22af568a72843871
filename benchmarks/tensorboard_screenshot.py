"""A screenshot of TensorBoard's HParams view over a finished sweep, as the README shows it.

    python benchmarks/tensorboard_screenshot.py outputs/multiruns/DATE/TIME \\
        --out benchmarks/results/tensorboard_hparams.png

Serves the sweep with a real TensorBoard on 127.0.0.1 (tests/tensorboard_live.py), waits until
it has read every run, and has headless Chromium (Debian: `apt-get install chromium`) render
the HParams dashboard into a PNG.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tensorboard_live import live_tensorboard  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    default = ROOT / "benchmarks/results/tensorboard_hparams.png"
    parser.add_argument("--out", type=Path, default=default)
    parser.add_argument("--size", default="1400,800", help="window width,height in pixels")
    opts = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        parser.exit(2, "error: no chromium on PATH (Debian: apt-get install chromium)\n")
    with live_tensorboard(opts.sweep_dir) as get:
        url = get.base + "/?darkMode=false#hparams"  # type: ignore[attr-defined]
        opts.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             f"--window-size={opts.size}", "--virtual-time-budget=20000",
             f"--screenshot={opts.out.resolve()}", url],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
