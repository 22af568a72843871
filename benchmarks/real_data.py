"""Real-shaped preference data, measured: tokenising speed (first run vs cached) and the default
reward-model job on HH-shaped dialogues (wall time, accuracy beside the lexical baseline).

    python benchmarks/real_data.py                # both parts (~15 min on 2 cores)
    python benchmarks/real_data.py tokenize       # tokenising only (~1 min)
    python benchmarks/real_data.py reward --reps 1

The data is `rlhf_exp.data.synthetic_dialogues` (HH-RLHF's layout and length profile, a lexical
signal with label noise), written to a file the way a user's data arrives. Every reward run is
its own process from an empty cache (`python run.py method=reward dataset=files ...`), so its
wall time includes building the tiny base, SFT and the reward model. Results:
`benchmarks/results/real_data.json`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import interleaved, machine, median, run_py, spread, write_json  # noqa: E402


def section_tokenize(rows: int, reps: int) -> dict[str, Any]:
    """Rows/s of tokenising preference pairs: a first run (tokenise + store) and a cached run
    (load the stored split), with 1 and 2 processes."""
    from datasets import Dataset

    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.data.formats import normalize_preference
    from rlhf_exp.data.synthetic_dialogues import hh_like_rows
    from rlhf_exp.data.tokens import TokenBudget, tokenize_split
    from rlhf_exp.models.tiny import train_tokenizer

    raw = hh_like_rows(rows, seed=0)
    pairs = normalize_preference(Dataset.from_list(raw), None, {})
    tokenizer = train_tokenizer((r["chosen"] for r in raw[:5000]), 2048, 512)
    budget = TokenBudget(512, 128)
    out: dict[str, Any] = {"rows": rows}
    for num_proc in (1, 2):
        first, cached = [], []
        for _ in range(reps):
            with tempfile.TemporaryDirectory() as tmp:
                cache = ArtifactCache(Path(tmp))
                for times in (first, cached):
                    started = time.perf_counter()
                    tokenize_split(
                        pairs, "preference", tokenizer, budget, cache=cache, num_proc=num_proc
                    )
                    times.append(time.perf_counter() - started)
        out[f"num_proc={num_proc}"] = {
            "first_s": first,
            "cached_s": cached,
            "first_rows_per_s": rows / median(first),
            "cached_rows_per_s": rows / median(cached),
        }
        print(
            f"  tokenise {rows} pairs, num_proc={num_proc}: first {spread(first)} s "
            f"({rows / median(first):,.0f} rows/s), cached {spread(cached)} s "
            f"({rows / median(cached):,.0f} rows/s)",
            flush=True,
        )
    return out


def section_reward(pairs: int, reps: int, root: Path) -> dict[str, Any]:
    """The default reward job on `pairs` HH-shaped pairs from an empty cache, and the same with
    random (not length-grouped) batches, interleaved."""
    from rlhf_exp.data.synthetic_dialogues import hh_like_rows, write_jsonl

    data = write_jsonl(hh_like_rows(pairs, seed=0), root / "pairs.jsonl")
    base = ["method=reward", "dataset=files", f"+dataset.data_files.preference={data}"]
    count = iter(range(10**6))

    def job(*extra: str):
        def run():
            n = next(count)
            return run_py(
                [*base, *extra, f"paths.cache_dir={root}/cache{n}"],
                root / f"run{n}",
                root / f"run{n}.log",
            )

        return run

    settings = {
        "default (length-grouped)": job(),
        "random batches": job("dataset.group_by_length=false"),
    }
    results = interleaved(settings, reps)
    out: dict[str, Any] = {"pairs": pairs}
    for name, runs in results.items():
        metrics = [m.metrics for m in runs]
        out[name] = {
            "wall_s": [m.wall_s for m in runs],
            "peak_rss_mb": [m.peak_rss_mb for m in runs],
            "accuracy": [m["eval/accuracy"] for m in metrics],
            "accuracy_initial": [m["eval/accuracy_initial"] for m in metrics],
            "accuracy_lexical_baseline": [m["eval/accuracy_lexical_baseline"] for m in metrics],
            "pairs_scored": [m["eval/pairs"] for m in metrics],
            "data": {k: v for k, v in metrics[0].items() if k.startswith("data/")},
        }
        row = out[name]
        mean = {k: statistics.fmean(row[k]) for k in ("accuracy", "accuracy_initial")}
        lexical = statistics.fmean(row["accuracy_lexical_baseline"])
        print(
            f"  {name}: wall {spread(row['wall_s'])} s, RM accuracy {mean['accuracy']:.3f} "
            f"(init {mean['accuracy_initial']:.3f}), lexical baseline {lexical:.3f}, "
            f"{row['pairs_scored'][0]} held-out pairs",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("parts", nargs="*", choices=["tokenize", "reward", []], default=[])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=20_000, help="pairs to tokenise")
    parser.add_argument("--pairs", type=int, default=2300, help="pairs of the reward job")
    opts = parser.parse_args()
    parts = opts.parts or ["tokenize", "reward"]
    result: dict[str, Any] = {"machine": machine()}
    print(f"machine: {result['machine']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if "tokenize" in parts:
            result["tokenize"] = section_tokenize(opts.rows, opts.reps)
        if "reward" in parts:
            result["reward"] = section_reward(opts.pairs, opts.reps, Path(tmp))
    print(write_json("real_data", result))


if __name__ == "__main__":
    main()
