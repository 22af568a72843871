"""Benchmark harness: roofline, per-method throughput and MFU, framework overhead against bare
TRL, our defaults against the naive notebook setup, scaling, and candidate defaults one knob
at a time (precision and threads; length grouping and torch.compile); and, named only, the
sections at GPT-2 small's size in `at_124m.py`.

    python benchmarks/run.py                   # everything (about 2 h on 2 cores)
    python benchmarks/run.py --quick           # every section, shrunk (a few minutes)
    python benchmarks/run.py overhead naive    # chosen sections
    python benchmarks/run.py seed_job mfu_124m checkpointing_124m   # at 124M (at_124m.py)
    python benchmarks/run.py seed_job_512 --reps 2  # its 512-token point alone (~15 min)
    python benchmarks/run.py seed_job_1024          # its 1,024-token point alone (~15 min)
    python benchmarks/ppo_peers.py             # PPO against TRL's RLOO, GRPO and 1.12 PPO
    python benchmarks/memory_timeline.py -- python run.py ...   # RSS phase by phase

Every measured run is its own process (`python run.py ...` or `benchmarks/bare_trl.py`), so
its peak RSS is its own and nothing is warm from a previous run but the OS page cache.
Compared settings run interleaved, the order reversed every other round (A B, B A, ...),
and tables show medians with min-max, so drift on a shared machine hits both sides alike.
Results go to `benchmarks/results/*.json` and `benchmarks/results/latest.md`.

MFU counts model FLOPs only (6 N per trained token, N = parameters; padding and attention
score FLOPs not counted) over the best fp32 matmul rate of this machine at the model's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from at_124m import SECTIONS_124M  # noqa: E402
from common import (  # noqa: E402
    RESULTS,
    Measured,
    bare,
    export_pairs,
    interleaved,
    median,
    method_flops,
    run_py,
    spread,
    write_json,
)
from roofline import roofline  # noqa: E402

MODELS = {  # GPT-2 shapes built from config: no download
    "tiny": {"n_layer": 2, "n_head": 4, "n_embd": 128},  # the default, ~0.6M parameters
    "small": {"n_layer": 6, "n_head": 8, "n_embd": 512},  # ~20M parameters
}
VOCAB = 2048
METHODS = ("sft", "reward", "dpo", "ppo")
# No TensorBoard, no periodic evaluation or checkpoints; transformers still evaluates at the
# last step, on a held-out set cut small so that it barely counts in the loop time.
QUIET = [
    "method.max_eval_samples=32",
    "logger=none",
    "eval.num_prompts=8",
    "method.eval_steps=100000",
    "method.save_steps=100000",
]


def model_overrides(shape: dict[str, int]) -> list[str]:
    return [f"model.tiny.{k}={v}" for k, v in shape.items()]


class Workspace:
    """Run dirs under one root, and the upstream SFT policy and reward model of each model,
    built once (briefly trained: any trained policy will do as a starting point)."""

    def __init__(self, root: Path, quick: bool) -> None:
        self.root, self.quick = root, quick
        self._count = 0

    def next_dir(self, label: str) -> Path:
        """A new run dir (numbering goes on past dirs an earlier invocation left)."""
        while True:
            self._count += 1
            path = self.root / "runs" / f"{self._count:03d}-{label}"
            if not path.exists() and not path.with_suffix(".log").exists():
                return path

    def base(self, model: str) -> list[str]:
        return [f"paths.root_dir={self.root}", *model_overrides(MODELS[model])]

    def upstream(self, model: str) -> list[str]:
        """Overrides pointing a run at this model's SFT policy and reward model."""
        rm = self.root / "upstream" / model / "reward"
        sft = self.root / "upstream" / model / "sft"
        if not (rm / "metrics.json").is_file():
            print(f"building upstream SFT policy and reward model of {model} ...", flush=True)
            run_py(
                [*self.base(model), "method=sft", "method.max_steps=30", *QUIET],
                sft,
                sft.with_suffix(".log"),
            )
            run_py(
                [
                    *self.base(model),
                    "method=reward",
                    "method.max_steps=30",
                    *QUIET,
                    f"upstream.sft.path={sft / 'model'}",
                ],
                rm,
                rm.with_suffix(".log"),
            )
        return [f"upstream.sft.path={sft / 'model'}", f"upstream.reward.path={rm / 'model'}"]

    def run(
        self,
        label: str,
        overrides: list[str],
        env: dict[str, str] | None = None,
        launcher: list[str] | None = None,
    ) -> Measured:
        run_dir = self.next_dir(label)
        return run_py(overrides, run_dir, run_dir.with_suffix(".log"), env, launcher or [])


# ------------------------------------------------------------------------------- sections
def section_roofline(ws: Workspace, reps: int) -> dict[str, Any]:
    out = {name: roofline(shape["n_embd"], VOCAB) for name, shape in MODELS.items()}
    rows = [
        "| model | d_model | fp32 GFLOP/s | bf16 GFLOP/s | bf16/fp32 |",
        "|---|---|---|---|---|",
    ]
    for name, r in out.items():
        fp32, bf16 = r["fp32"]["peak"], r["bf16"]["peak"]
        rows.append(
            f"| {name} | {MODELS[name]['n_embd']} | {fp32:.0f} | {bf16:.0f} | {bf16 / fp32:.2f} |"
        )
    return {"data": out, "table": rows}


def method_overrides(method: str, quick: bool) -> list[str]:
    steps = 6 if quick else 30
    if method == "ppo":
        steps = 3 if quick else 10
        return ["method=ppo", f"method.max_steps={steps}", "method.reward=model"]
    # precomputation scores every training pair once: a smaller set keeps it proportionate
    extra = ["dataset.n_pairs=2000"] if method == "dpo" else []
    return [f"method={method}", f"method.max_steps={steps}", *extra]


def method_summary(model: str, method: str, runs: list[Measured], peak: float) -> dict[str, Any]:
    """Loop time, throughput, memory and MFU of one model+method's repetitions."""
    ms = [r.metrics for r in runs]
    if method == "ppo":
        loop = [m["time/rollout_total_s"] + m["time/update_total_s"] for m in ms]
        tokens = [m["throughput/tokens_per_s_total"] for m in ms]  # generated tokens
        trained = [m["throughput/sequence_tokens_total"] / t for m, t in zip(ms, loop, strict=True)]
        responses = [m["throughput/tokens_total"] / t for m, t in zip(ms, loop, strict=True)]
        samples = [m["train/global_step"] * 64 / t for m, t in zip(ms, loop, strict=True)]
        split = {
            "rollout_s": median([m["time/rollout_total_s"] for m in ms]),
            "update_s": median([m["time/update_total_s"] for m in ms]),
        }
    else:
        loop = [m["time/train_s"] for m in ms]
        tokens = trained = [m["throughput/tokens_per_s"] for m in ms]
        responses = [0.0 for _ in ms]
        samples = [m["throughput/samples_per_s"] for m in ms]
        split = {}
    shape = MODELS[model]
    phases = method_flops(method, shape["n_embd"], shape["n_layer"], VOCAB).values()
    # FLOPs per second of the loop: PPO's rollout and update both run inside it
    flops = [
        sum(phase.total(t, r) for phase in phases) for t, r in zip(trained, responses, strict=True)
    ]
    return {
        "params": ms[0]["model/total_params"],
        "loop_s": loop,
        "tokens_per_s": tokens,
        "samples_per_s": samples,
        "peak_rss_mb": [r.peak_rss_mb for r in runs],
        "flops_per_token": median(flops) / median(trained),  # PPO: per prompt+response token
        "mfu_fp32": median(flops) / (peak * 1e9),
        **split,
    }


def methods_table(data: dict[str, Any]) -> list[str]:
    rows = [
        "| model | method | params | loop s | samples/s | tokens/s | peak RSS MB | MFU (fp32) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, d in data.items():
        model, method = key.split("/")
        gen = " generated" if method == "ppo" else ""
        rows.append(
            f"| {model} | {method} | {d['params'] / 1e6:.1f}M | {spread(d['loop_s'])} | "
            f"{spread(d['samples_per_s'])} | {spread(d['tokens_per_s'])}{gen} | "
            f"{median(d['peak_rss_mb']):.0f} | {d['mfu_fp32']:.1%} |"
        )
    rows.append("")
    rows += [
        f"PPO {key.split('/')[0]}: rollout {d['rollout_s']:.1f} s, update {d['update_s']:.1f} s"
        for key, d in data.items()
        if key.endswith("/ppo")
    ]
    return rows


def section_methods(ws: Workspace, reps: int) -> dict[str, Any]:
    peaks = {
        name: roofline(shape["n_embd"], VOCAB)["fp32"]["peak"] for name, shape in MODELS.items()
    }
    data: dict[str, Any] = {}
    for model in ["tiny"] if ws.quick else list(MODELS):
        upstream = ws.upstream(model)
        settings: dict[str, Callable[[], Measured]] = {
            method: (
                lambda m=method, model=model, upstream=upstream: ws.run(
                    f"{model}-{m}",
                    [*ws.base(model), *method_overrides(m, ws.quick), *QUIET, *upstream],
                )
            )
            for method in METHODS
        }
        for method, runs in interleaved(settings, reps).items():
            data[f"{model}/{method}"] = method_summary(model, method, runs, peaks[model])
    return {"data": data, "peaks_fp32": peaks, "table": methods_table(data)}


def bare_knobs(run_dir: Path) -> dict[str, Any]:
    """bare_trl.py options carrying a framework run's trainer settings, so that both sides
    train alike even where the bare script's defaults differ (e.g. reward's learning rate)."""
    from omegaconf import OmegaConf

    run = OmegaConf.load(run_dir / "config.yaml")
    method = run.method
    knobs = {
        "--lr": method.learning_rate,
        "--batch": method.per_device_train_batch_size,
        "--grad-accum": method.gradient_accumulation_steps,
        "--eval-batch": method.per_device_eval_batch_size,
        "--max-length": method.max_length,
        "--seed": run.seed,
    }
    if "beta" in method:
        knobs["--beta"] = method.beta
    return knobs


def options(knobs: dict[str, Any]) -> list[str]:
    return [str(x) for pair in knobs.items() for x in pair]


def loop_plus_setup(m: Measured) -> float:
    return m.metrics["time/train_s"] + m.metrics.get("time/trainer_setup_s", 0.0)


def section_overhead(ws: Workspace, reps: int) -> dict[str, Any]:
    """run.py against the bare TRL script: same model, rows, order, batch, steps and evals.

    The loop ratio is the framework's cost inside training (callbacks: signal guard, NaN
    check, TensorBoard, token counting); the process ratio adds what the framework does
    around it (config checks, cache, before/after evaluation, reports).
    """
    # Long enough (~35 s of DPO loop) that a burst of noise on a shared machine is a small
    # part of one run: at 60 steps single runs of the same command varied by +-25%.
    steps = 10 if ws.quick else 200
    upstream = ws.upstream("tiny")
    sft_model = upstream[0].split("=", 1)[1]
    knobs = ["method.eval_steps=1000", "method.save_steps=1000", "method.logging_steps=10"]
    data: dict[str, Any] = {}
    rows = [
        f"tiny model, {steps} steps; the held-out loss shows whether both did the same training",
        "",
        "| method | ours loop s | bare loop s | loop ratio | setup+loop ratio | process ratio "
        "| held-out loss ours / bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for method in ("dpo", "reward"):
        ours_args = [
            *ws.base("tiny"),
            f"method={method}",
            f"method.max_steps={steps}",
            *knobs,
            *upstream,
            "dataset.n_pairs=3000",  # precomputation scores every pair: keep it proportionate
            "logger=tensorboard",
            "eval.num_prompts=8",
            "eval.reward_model=false",
        ]
        probe = ws.run(f"probe-{method}", ours_args)  # also warms the page cache
        pairs = export_pairs(probe.run_dir, ws.root / f"pairs-{method}")
        bare_args = [
            method,
            *options(bare_knobs(probe.run_dir)),
            "--model",
            sft_model,
            "--data",
            str(pairs),
            "--steps",
            str(steps),
            "--eval-steps",
            "1000",
            "--save-steps",
            "1000",
            "--logging-steps",
            "10",
        ]
        results = interleaved(
            {
                "ours": lambda a=ours_args, m=method: ws.run(f"ours-{m}", a),
                "bare": lambda a=bare_args, m=method: bare(ws, f"bare-{m}", a),
            },
            reps,
        )
        ours, theirs = results["ours"], results["bare"]
        pairs_ = list(zip(ours, theirs, strict=True))
        loop = [o.metrics["time/train_s"] / b.metrics["time/train_s"] for o, b in pairs_]
        both = [loop_plus_setup(o) / loop_plus_setup(b) for o, b in pairs_]
        wall = [o.wall_s / b.wall_s for o, b in pairs_]
        data[method] = {
            "steps": steps,
            "loop_ratio": loop,
            "setup_loop_ratio": both if method == "dpo" else None,
            "process_ratio": wall,
            "eval_loss": {
                "ours": ours[0].metrics["eval/loss"],
                "bare": theirs[0].metrics["eval/loss"],
            },
            "ours": [o.metrics for o in ours],
            "bare": [b.metrics for b in theirs],
        }
        rows.append(
            f"| {method} | {spread([o.metrics['time/train_s'] for o in ours])} | "
            f"{spread([b.metrics['time/train_s'] for b in theirs])} | {spread(loop)} | "
            f"{spread(both) if method == 'dpo' else 'n/a'} | {spread(wall)} | "
            f"{ours[0].metrics['eval/loss']:.4f} / {theirs[0].metrics['eval/loss']:.4f} |"
        )
        rows_eval = data[method]["eval_loss"]
        print(f"  {method} held-out loss ours {rows_eval['ours']:.4f} bare {rows_eval['bare']:.4f}")
    return {"data": data, "table": rows}


def section_naive(ws: Workspace, reps: int) -> dict[str, Any]:
    """Our DPO defaults against the original notebook's setup, one epoch of the same pairs.

    Samples/s counts setup (tokenising, and for us scoring every pair with the reference
    once) plus the loop: precomputation is real work and must not be hidden.
    """
    model = "small" if not ws.quick else "tiny"
    n_pairs = 600
    upstream = ws.upstream(model)
    ours_args = [
        *ws.base(model),
        "method=dpo",
        f"dataset.n_pairs={n_pairs}",
        *upstream,
        "method.eval_steps=100000",
        "method.save_steps=100000",
        "logger=none",
        "eval.num_prompts=8",
        "eval.reward_model=false",
    ]
    probe = ws.run("probe-naive", ours_args)
    pairs = export_pairs(probe.run_dir, ws.root / "pairs-naive")
    n_train = sum(1 for _ in (pairs / "train.jsonl").open())
    # The notebook fed each optimiser step's pairs in one batch: same pairs per step as ours.
    naive_knobs = bare_knobs(probe.run_dir)
    naive_knobs["--batch"] *= naive_knobs.pop("--grad-accum")
    bare_args = [
        "dpo",
        "--naive",
        *options(naive_knobs),
        "--model",
        upstream[0].split("=", 1)[1],
        "--data",
        str(pairs),
        "--eval-steps",
        "100000",
        "--save-steps",
        "100000",
    ]
    results = interleaved(
        {
            "ours": lambda: ws.run("ours-dpo-defaults", ours_args),
            "naive": lambda: bare(ws, "naive-dpo", bare_args),
        },
        reps,
    )
    out: dict[str, Any] = {"model": model, "train_pairs": n_train}
    rows = [
        f"DPO, {model} model, one epoch of {n_train} pairs",
        "",
        "| setup | pairs/s (setup+loop) | peak RSS MB | held-out accuracy | held-out loss |",
        "|---|---|---|---|---|",
    ]
    for name, runs in results.items():
        sps = [n_train / loop_plus_setup(r) for r in runs]
        acc = [
            r.metrics["eval/rewards_accuracies"]
            if "eval/rewards_accuracies" in r.metrics
            else r.metrics["eval/rewards/accuracies"]
            for r in runs
        ]
        loss = [r.metrics["eval/loss"] for r in runs]
        rss = [r.peak_rss_mb for r in runs]
        out[name] = {"pairs_per_s": sps, "peak_rss_mb": rss, "accuracy": acc, "loss": loss}
        rows.append(f"| {name} | {spread(sps)} | {spread(rss)} | {spread(acc)} | {spread(loss)} |")
    speed = median(out["ours"]["pairs_per_s"]) / median(out["naive"]["pairs_per_s"])
    memory = median(out["ours"]["peak_rss_mb"]) / median(out["naive"]["peak_rss_mb"])
    out |= {"speed_ratio": speed, "memory_ratio": memory}
    rows.append(
        f"\nours/naive: {speed:.2f}x pairs/s (target >= 2), {memory:.2f}x peak RSS (target <= 0.6)"
    )
    return {"data": out, "table": rows}


def section_scaling(ws: Workspace, reps: int) -> dict[str, Any]:
    """SFT time and memory against sequence length, batch size, model size and processes."""
    steps = 5 if ws.quick else 20
    base = ["method=sft", f"method.max_steps={steps}", *QUIET]
    shapes = {
        "0.6M": MODELS["tiny"],
        "5M": {"n_layer": 4, "n_head": 4, "n_embd": 256},
        "20M": MODELS["small"],
    }
    points: list[tuple[str, str, list[str], list[str]]] = []
    for length in (16, 32, 64):
        points.append(
            (
                "max_length",
                str(length),
                [*model_overrides(MODELS["tiny"]), f"method.max_length={length}"],
                [],
            )
        )
    for batch in (8, 16, 32):
        points.append(
            (
                "batch",
                str(batch),
                [*model_overrides(MODELS["tiny"]), f"method.per_device_train_batch_size={batch}"],
                [],
            )
        )
    for name, shape in shapes.items():
        points.append(("model", name, model_overrides(shape), []))
    for procs in (1, 2):
        launch = (
            []
            if procs == 1
            else [
                "-m",
                "accelerate.commands.launch",
                "--num_processes",
                "2",
                "--num_machines",
                "1",
                "--mixed_precision",
                "no",
                "--dynamo_backend",
                "no",
            ]
        )
        points.append(("processes", str(procs), model_overrides(MODELS["tiny"]), launch))
    # each model's base is built into the cache by one process first: ranks of a launched
    # group must not race to build it
    for shape in shapes.values():
        ws.run(
            "scaling-warmup",
            [f"paths.root_dir={ws.root}", *base, *model_overrides(shape), "method.max_steps=1"],
        )
    data: dict[str, Any] = {}
    rows = [
        "| axis | value | loop s | samples/s | tokens/s | peak RSS MB |",
        "|---|---|---|---|---|---|",
    ]
    for axis, value, overrides, launch in points:
        args = [f"paths.root_dir={ws.root}", *base, *overrides]
        runs = []
        for _ in range(reps):
            runs.append(ws.run(f"scaling-{axis}-{value}", args, launcher=launch))
        ms = [r.metrics for r in runs]
        entry = {
            "loop_s": [m["time/train_s"] for m in ms],
            "samples_per_s": [m["throughput/samples_per_s"] for m in ms],
            "tokens_per_s": [m["throughput/tokens_per_s"] for m in ms],
            # with 2 processes wait4 sees the launcher only: its children's peak is not ours
            "peak_rss_mb": [r.peak_rss_mb for r in runs] if not launch else None,
        }
        data[f"{axis}={value}"] = entry
        rss = spread(entry["peak_rss_mb"]) if entry["peak_rss_mb"] else "n/a"
        rows.append(
            f"| {axis} | {value} | {spread(entry['loop_s'])} | {spread(entry['samples_per_s'])} | "
            f"{spread(entry['tokens_per_s'])} | {rss} |"
        )
    return {"data": data, "table": rows}


Variants = dict[str, tuple[list[str], dict[str, str] | None]]  # name: (overrides, env)


def compare_knobs(
    ws: Workspace,
    reps: int,
    cases: dict[str, Variants],
    workloads: dict[str, list[tuple[str, str]]],
    steps: int,
) -> dict[str, Any]:
    """Each knob's two variants (A = today's default, B = the candidate) interleaved on each
    of its (model, method) workloads; tokens/s of each and B/A per pair of runs, and the
    result each trained to (held-out loss; PPO: gold reward of the held-out prompts)."""
    data: dict[str, Any] = {}
    rows = [
        "| knob | model | method | A | B | tokens/s A | tokens/s B | B/A | peak RSS MB A / B "
        "| result A / B |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for knob, variants in cases.items():
        for model, method in workloads[knob]:
            if ws.quick and model != "tiny":
                continue
            upstream = ws.upstream(model)
            overrides = [*ws.base(model), *method_overrides(method, ws.quick), *QUIET, *upstream]
            if method != "ppo":
                overrides.append(f"method.max_steps={steps}")
            results = interleaved(
                {
                    name: partial(
                        ws.run, f"{knob}-{name}-{model}-{method}", [*overrides, *extra], env
                    )
                    for name, (extra, env) in variants.items()
                },
                reps,
            )
            key = "throughput/tokens_per_s_total" if method == "ppo" else "throughput/tokens_per_s"
            (a, ra), (b, rb) = results.items()
            ta, tb = [r.metrics[key] for r in ra], [r.metrics[key] for r in rb]
            ratio = [y / x for x, y in zip(ta, tb, strict=True)]
            rss = {name: [r.peak_rss_mb for r in runs] for name, runs in results.items()}
            quality = "eval/gold_reward" if method == "ppo" else "eval/loss"
            scores = {name: [r.metrics[quality] for r in runs] for name, runs in results.items()}
            data[f"{knob}/{model}/{method}"] = {
                a: ta,
                b: tb,
                "ratio": ratio,
                "peak_rss_mb": rss,
                quality: scores,
            }
            memory = f"{median(rss[a]):.0f} / {median(rss[b]):.0f}"
            result = f"{quality.split('/')[1]} {median(scores[a]):.4g} / {median(scores[b]):.4g}"
            cells = [knob, model, method, a, b, spread(ta), spread(tb), spread(ratio), memory]
            cells.append(result)
            rows.append("| " + " | ".join(cells) + " |")
    return {"data": data, "table": rows}


def section_defaults(ws: Workspace, reps: int) -> dict[str, Any]:
    """bf16 autocast vs fp32, and 1 vs 2 threads (`OMP_NUM_THREADS`), one knob at a time."""
    from common import child_env

    cases: dict[str, Variants] = {
        "precision": {
            "fp32": (["model.precision=fp32"], None),
            "bf16": (["model.precision=bf16"], None),
        },
        "threads": {
            "2": ([], child_env(OMP_NUM_THREADS="2")),
            "1": ([], child_env(OMP_NUM_THREADS="1")),
        },
    }
    every_method = [(model, method) for model in MODELS for method in METHODS]
    workloads = {
        "precision": every_method,
        "threads": [("tiny", "sft"), ("small", "sft"), ("tiny", "ppo")],
    }
    return compare_knobs(ws, reps, cases, workloads, 5 if ws.quick else 30)


def section_trainer_knobs(ws: Workspace, reps: int) -> dict[str, Any]:
    """Length grouping and torch.compile against today's defaults, on the trainer methods.

    Compile pays its compilation inside the loop (and again for each new padded length), so
    the loop is long enough for that to amortise as far as a default run would.
    """
    cases: dict[str, Variants] = {
        "group_by_length": {
            "false": (["method.group_by_length=false"], None),
            "true": (["method.group_by_length=true"], None),
        },
        "torch_compile": {
            "false": (["method.torch_compile=false"], None),
            "true": (["method.torch_compile=true"], None),
        },
    }
    workloads = {
        "group_by_length": [("tiny", "dpo"), ("small", "dpo"), ("tiny", "sft")],
        "torch_compile": [("tiny", "dpo"), ("small", "dpo")],
    }
    return compare_knobs(ws, reps, cases, workloads, 10 if ws.quick else 60)


SECTIONS = {
    "roofline": section_roofline,
    "methods": section_methods,
    "overhead": section_overhead,
    "naive": section_naive,
    "scaling": section_scaling,
    "defaults": section_defaults,
    "trainer_knobs": section_trainer_knobs,
}
DEFAULT_SECTIONS = list(SECTIONS)  # the 124M sections take an hour: named, never implied
SECTIONS |= SECTIONS_124M


def write_report(quick: bool) -> Path:
    """`latest.md` from every section's newest JSON (sections may be run separately)."""
    import torch

    suffix = "_quick" if quick else ""
    report = [
        f"# Benchmarks{' (quick: smoke-test sizes, not for quoting)' if quick else ''}",
        "",
        f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}. Medians "
        "(min-max) over interleaved repetitions; each run is its own process.",
    ]
    for name in [*SECTIONS, "ppo_peers"]:
        path = RESULTS / f"{name}{suffix}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            report += [
                "",
                f"## {name} ({result['reps']} reps, {result.get('date', 'undated')})",
                "",
            ]
            report += result["table"]
    target = RESULTS / f"latest{suffix}.md"
    target.write_text("\n".join(report) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sections", nargs="*", choices=[*SECTIONS, []], default=[])
    parser.add_argument("--quick", action="store_true", help="every section shrunk, 1 rep")
    parser.add_argument("--reps", type=int, help="repetitions per setting (default 3, quick 1)")
    parser.add_argument("--work", type=Path, help="work dir to reuse (default: a new tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    opts = parser.parse_args()
    reps = opts.reps or (1 if opts.quick else 3)
    work = opts.work or Path(tempfile.mkdtemp(prefix="rlhf_bench_"))
    ws = Workspace(work, opts.quick)
    for name in opts.sections or DEFAULT_SECTIONS:
        print(f"== {name}", flush=True)
        result = SECTIONS[name](ws, reps)
        stamp = time.strftime("%Y-%m-%d %H:%M")
        write_json(name + ("_quick" if opts.quick else ""), {"reps": reps, "date": stamp, **result})
        print("\n".join(result["table"]), flush=True)
    print(f"wrote {write_report(opts.quick)}")
    if not opts.keep and opts.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
