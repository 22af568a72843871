"""Sections of `benchmarks/run.py` at GPT-2 small's size (`model=gpt2_shape`: 124M parameters,
50,257-row vocab, random init, `precision=auto`, so bf16 on a CPU with AVX-512-BF16):

- `seed_job`: the seed notebook's job, a GPT-2 reward model with LoRA r=8 at batch 4 on
  UltraFeedback-length pairs, our defaults against the notebook's settings (every batch padded
  to max_length, fp32, TRL's defaults including gradient checkpointing), max_length 512 and
  1,024, the same steps; then one run of each side under `memory_timeline.py`.
- `mfu_124m`: SFT, reward, DPO and PPO on the embedded task, tokens/s and MFU against the bf16
  matmul roofline measured at the start of the same section (PPO: rollout and update apart).
- `mfu_124m_long`: the same on UltraFeedback-length rows (the seed job's data, 512-token
  budget), each method's defaults, from the seed job's SFT policy and reward model.
- `checkpointing_124m`: `model.gradient_checkpointing` on and off on the seed job's workload.
- `huge_pages_124m`: the four methods of `mfu_124m` with torch's huge pages for large tensors
  off and on (`THP_MEM_ALLOC_ENABLE=0/1`; rlhf_exp sets 1 unless told otherwise), interleaved.
- `heap_huge_pages_124m`: the same four with huge pages on, glibc's mmap threshold its own
  (rising) against fixed at 2 MB, interleaved.

Each takes minutes per run on 2 cores; none is in the default set of `run.py`: name them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import (
    PYTHON,
    ROOT,
    bare,
    child_env,
    export_pairs,
    interleaved,
    machine,
    median,
    method_flops,
    run_measured,
    run_py,
    spread,
)
from omegaconf import OmegaConf
from roofline import roofline

# the preset's own shape (12 layers, 768 wide, 50,257-row vocab), not a copy of it
_TINY = OmegaConf.load(ROOT / "conf" / "model" / "gpt2_shape.yaml").tiny
SHAPE = {"n_layer": _TINY.n_layer, "n_embd": _TINY.n_embd, "vocab": _TINY.vocab_size}
QUIET = [
    "logger=none",
    "method.eval_steps=100000",
    "method.save_steps=100000",
    "method.max_eval_samples=32",
    "eval.num_prompts=8",
]
SEED_PAIRS_PER_STEP = 4  # the notebook's batch
SEED_LORA_R = 8
# Ours keeps the reward default's 4 micro-batches per step (8 x 4 = 32 pairs), so 4 pairs are
# 1 x 4; the notebook fed all 4 at once.
SEED_MICRO = (1, 4)
SEED_EVAL_PAIRS = 8  # the end-of-training evaluation both trainers run inside their loop


def _base(ws: Any) -> list[str]:
    return [f"paths.root_dir={ws.root}", "model=gpt2_shape"]


def _build(ws: Any, label: str, overrides: list[str]) -> Path:
    """A model dir trained once in the workspace (not measured)."""
    run_dir = ws.root / "upstream" / label
    if not (run_dir / "metrics.json").is_file():
        print(f"building {label} ...", flush=True)
        command = [PYTHON, "run.py", *_base(ws), *overrides, *QUIET, f"hydra.run.dir={run_dir}"]
        run_measured(command, run_dir.with_suffix(".log"))
    return run_dir / "model"


# ------------------------------------------------------------------------------ seed job
def _seed_data(ws: Any) -> list[str]:
    """UltraFeedback-length pairs in a file, as a user's data arrives; `dataset=files` overrides."""
    from rlhf_exp.data.synthetic_dialogues import ultrafeedback_like_rows, write_jsonl

    path = ws.root / "ultrafeedback_like.jsonl"
    if not path.is_file():
        write_jsonl(ultrafeedback_like_rows(1000, seed=0), path)
    return ["dataset=files", f"+dataset.data_files.preference={path}"]


def _budget(max_length: int) -> list[str]:
    # the whole budget for prompt + answer, each answer keeping up to half of it
    return [f"dataset.max_length={max_length}", f"dataset.max_completion_length={max_length // 2}"]


def _seed_ours(ws: Any, sft: Path, max_length: int, steps: int, extra: list[str]) -> list[str]:
    return [
        *_base(ws),
        *_seed_data(ws),
        *_budget(max_length),
        "method=reward",
        "lora=default",
        f"lora.r={SEED_LORA_R}",
        f"lora.alpha={2 * SEED_LORA_R}",
        f"method.per_device_train_batch_size={SEED_MICRO[0]}",
        f"method.gradient_accumulation_steps={SEED_MICRO[1]}",
        f"method.max_steps={steps}",
        f"upstream.sft.path={sft}",
        *[q for q in QUIET if not q.startswith("method.max_eval_samples")],
        f"method.max_eval_samples={SEED_EVAL_PAIRS}",
        "method.per_device_eval_batch_size=8",  # as the notebook side (TRL's default)
        *extra,
    ]


def _seed_sft(ws: Any) -> Path:
    # One step: the reward model starts from a base; the notebook's was pretrained GPT-2, ours is
    # random (no download), which changes no FLOP and no byte of memory.
    # 4 sequences: SFT's default 32 x 512 tokens at 124M was killed for memory (24 GiB)
    overrides = [*_seed_data(ws), *_budget(512), "method=sft", "method.max_steps=1",
                 "method.per_device_train_batch_size=4"]  # fmt: skip
    return _build(ws, "gpt2_shape-uf-sft", overrides)


def seed_ours_workspace(root: Path) -> list[str]:
    """The run.py overrides of the seed job's "ours" side at 512 tokens, 8 steps, with its SFT
    policy, data file and tokenised data built once in `root` (for scripts that vary how that
    one run executes: allocators, checkouts)."""
    ws = SimpleNamespace(root=root)
    root.mkdir(parents=True, exist_ok=True)
    args = _seed_ours(ws, _seed_sft(ws), 512, 8, [])
    if not (root / "warm" / "metrics.json").is_file():
        run_py(args, root / "warm", root / "warm.log")  # tokenised data into the cache
    return args


def ppo_long_prompts_workspace(root: Path) -> list[str]:
    """The run.py overrides of PPO at 124M on UltraFeedback-length prompts (512-token budget,
    one iteration of the method's defaults: 64 prompts, 4 epochs), from the seed job's SFT
    policy and reward model, built once in `root` (`seed_ours_workspace`)."""
    seed_ours_workspace(root)
    ws = SimpleNamespace(root=root)
    return [
        *_base(ws),
        *_seed_data(ws),
        *_budget(512),
        "method=ppo",
        "method.max_steps=1",
        f"upstream.sft.path={_seed_sft(ws)}",
        f"upstream.reward.path={root / 'warm' / 'model'}",
        *QUIET,
    ]


def sft_long_rows_workspace(root: Path) -> list[str]:
    """The run.py overrides of SFT at 124M (random-init `gpt2_shape`) on UltraFeedback-length
    dialogues (512-token budget), 2 steps of the method's defaults (32 rows per step)."""
    ws = SimpleNamespace(root=root)
    return [*_base(ws), *_seed_data(ws), *_budget(512), "method=sft", "method.max_steps=2", *QUIET]


def dpo_long_pairs_workspace(root: Path) -> list[str]:
    """The run.py overrides of DPO at 124M on UltraFeedback-length pairs (512-token budget),
    2 steps of the method's defaults (32 pairs per step, reference log-probs precomputed for
    the rows trained on), from the seed job's SFT policy and reward model (the evaluation's
    scorer), built once in `root` (`seed_ours_workspace`)."""
    seed_ours_workspace(root)
    ws = SimpleNamespace(root=root)
    return [
        *_base(ws),
        *_seed_data(ws),
        *_budget(512),
        "method=dpo",
        "method.max_steps=2",
        f"upstream.sft.path={_seed_sft(ws)}",
        f"upstream.reward.path={root / 'warm' / 'model'}",
        *QUIET,
    ]


def _naive_args(sft: Path, pairs: Path, max_length: int, steps: int, lr: float) -> list[str]:
    return [
        "reward",
        "--naive",
        "--lora-r", str(SEED_LORA_R),
        "--batch", str(SEED_PAIRS_PER_STEP),
        "--grad-accum", "1",
        "--max-length", str(max_length),
        "--steps", str(steps),
        "--lr", str(lr),
        "--model", str(sft),
        "--data", str(pairs),
        "--eval-steps", "100000",
        "--save-steps", "100000",
        "--eval-batch", "8",
    ]  # fmt: skip


SEED_TABLE_HEADER = [
    "| max_length | setup | pairs/s (loop) | peak RSS MB | loop s | precision, checkpointing |",
    "|---|---|---|---|---|---|",
]


def section_seed_job(ws: Any, reps: int) -> dict[str, Any]:
    steps = 3 if ws.quick else 8
    lengths = {512: reps} if ws.quick else {512: reps, 1024: 1}  # a notebook run at 1,024: ~8 min
    sft, pairs, lr = _seed_setup(ws, steps)
    out: dict[str, Any] = {"steps": steps, "pairs_per_step": SEED_PAIRS_PER_STEP}
    rows = [
        f"Reward model, GPT-2 shape (124M) + LoRA r={SEED_LORA_R}, {SEED_PAIRS_PER_STEP} pairs per "
        f"step (ours as {SEED_MICRO[0]} x {SEED_MICRO[1]}), {steps} steps, UltraFeedback-length "
        "pairs; loop time includes both trainers' end-of-training evaluation and checkpoint",
        "",
        *SEED_TABLE_HEADER,
    ]
    for max_length, n in lengths.items():
        point = seed_job_point(ws, sft, pairs, lr, max_length, steps, n)
        out[str(max_length)] = point
        rows += point.pop("rows")
    rows += ["", "Targets: ours/notebook >= 2x pairs/s and <= 0.5x peak RSS."]
    out["timeline"] = _seed_timelines(ws, sft, 512, steps, lr)
    rows += ["", "Memory timeline at max_length 512 (largest RSS MB in each phase):", ""]
    for name, timeline in out["timeline"].items():
        phases = "; ".join(f"{p['phase']} {p['mb']}" for p in timeline["phases"])
        rows.append(f"- {name}: {phases}")
    return {"data": out, "table": rows}


def _seed_job_at(max_length: int) -> Callable[[Any, int], dict[str, Any]]:
    """The seed job at one max_length alone (no other point, no memory timelines): a quicker
    re-measure of the target that moves most between machines."""

    def section(ws: Any, reps: int) -> dict[str, Any]:
        steps = 3 if ws.quick else 8
        sft, pairs, lr = _seed_setup(ws, steps)
        point = seed_job_point(ws, sft, pairs, lr, max_length, steps, reps)
        rows = [f"Seed job at {max_length} tokens, {steps} steps (as `seed_job`)", "",
                *SEED_TABLE_HEADER]  # fmt: skip
        rows += point.pop("rows")
        return {"data": {"steps": steps, **point}, "table": rows}

    return section


def _seed_setup(ws: Any, steps: int) -> tuple[Path, Path, float]:
    """(SFT policy, the pairs as the notebook reads them, learning rate), after one warm-up
    run of ours that tokenises the data into the cache and names the rows."""
    sft = _seed_sft(ws)
    probe = ws.run("seed-probe", _seed_ours(ws, sft, 512, steps, []))
    pairs = export_pairs(probe.run_dir, ws.root / "uf-pairs")
    return sft, pairs, OmegaConf.load(probe.run_dir / "config.yaml").method.learning_rate


def seed_job_point(
    ws: Any, sft: Path, pairs: Path, lr: float, max_length: int, steps: int, reps: int
) -> dict[str, Any]:
    """Ours against the notebook's settings at one max_length, `reps` interleaved rounds: each
    side's pairs/s, peak RSS and loop seconds, their ratios, and the table rows."""
    ours_args = _seed_ours(ws, sft, max_length, steps, [])
    naive_args = _naive_args(sft, pairs, max_length, steps, lr)
    runs = interleaved(
        {
            "ours": lambda: ws.run(f"seed-ours-{max_length}", ours_args),
            "notebook": lambda: bare(ws, f"seed-notebook-{max_length}", naive_args),
        },
        reps,
    )
    point: dict[str, Any] = {}
    rows = []
    for name, measured in runs.items():
        loop = [m.metrics["time/train_s"] for m in measured]
        pps = [steps * SEED_PAIRS_PER_STEP / s for s in loop]
        rss = [m.peak_rss_mb for m in measured]
        point[name] = {"pairs_per_s": pps, "peak_rss_mb": rss, "loop_s": loop}
        how = (
            f"{measured[0].metrics.get('model/precision')}, on"
            if name == "ours"
            else "fp32, on (TRL's default), padded to max_length"
        )
        cells = [str(max_length), name, spread(pps), spread(rss), spread(loop), how]
        rows.append("| " + " | ".join(cells) + " |")
    speed = median(point["ours"]["pairs_per_s"]) / median(point["notebook"]["pairs_per_s"])
    memory = median(point["ours"]["peak_rss_mb"]) / median(point["notebook"]["peak_rss_mb"])
    rows.append(f"| {max_length} | ours/notebook | {speed:.2f}x | {memory:.2f}x | | |")
    return point | {"speed_ratio": speed, "memory_ratio": memory, "rows": rows}


def _seed_timelines(ws: Any, sft: Path, max_length: int, steps: int, lr: float) -> dict[str, Any]:
    """One run of each side under memory_timeline.py: RSS by phase of the run's own output."""
    ours = [PYTHON, "run.py", *_seed_ours(ws, sft, max_length, steps, [])]
    ours.append(f"hydra.run.dir={ws.next_dir('seed-timeline-ours')}")
    pairs = ws.root / "uf-pairs"
    naive = [PYTHON, "benchmarks/bare_trl.py",
             *_naive_args(sft, pairs, max_length, steps, lr),
             "--out", str(ws.next_dir("seed-timeline-notebook"))]  # fmt: skip
    out = {}
    for name, command in (("ours", ours), ("notebook", naive)):
        text = subprocess.run(
            [PYTHON, "benchmarks/memory_timeline.py", "--", *command],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        out[name] = {"phases": _phases(text), "raw": text.splitlines()}
    return out


def _phases(timeline: str) -> list[dict[str, Any]]:
    """memory_timeline's lines folded into named phases: the largest RSS seen in each."""
    marks = (  # first match wins; progress bars ("it/s]") are the training loop's
        ("start", "(start)"),
        ("training", "it/s]"),
        ("training", "s/it]"),
        ("model loaded", "parameters trainable"),
        ("model loaded", "LOAD REPORT"),
        ("held-out scoring before training", "lexical baseline"),
        ("data", "okeniz"),
        ("data", "cache:"),
        ("data", "dataset"),
        ("after training", "finished"),
        ("after training", "train_runtime"),
    )
    peaks: dict[str, int] = {}
    for line in timeline.splitlines():
        parts = line.split(None, 4)
        if len(parts) < 5 or parts[3] != "MB":
            continue
        mb, text = int(parts[2]), parts[4]
        phase = next((name for name, mark in marks if mark in text), "other")
        peaks[phase] = max(peaks.get(phase, 0), mb)
    return [{"phase": k, "mb": v} for k, v in peaks.items()]


# ------------------------------------------------------------------------------ MFU
def _embedded_upstream(ws: Any) -> list[str]:
    sft = _build(ws, "gpt2_shape-sft", ["method=sft", "method.max_steps=5"])
    rm = _build(
        ws, "gpt2_shape-reward", ["method=reward", "method.max_steps=5", f"upstream.sft.path={sft}"]
    )
    # MFU counts the model's FLOPs, so recomputed activations would read as waste: measured
    # without (the short embedded texts need no checkpointing; checkpointing_124m prices it)
    return [f"upstream.sft.path={sft}", f"upstream.reward.path={rm}",
            "model.gradient_checkpointing=false"]  # fmt: skip


def _method_args(method: str, quick: bool) -> list[str]:
    if method == "ppo":
        return ["method=ppo", f"method.max_steps={1 if quick else 3}", "method.reward=model",
                "eval.greedy=false"]  # fmt: skip
    steps = 2 if quick else 8
    return [f"method={method}", f"method.max_steps={steps}"]


METHODS_124M = ("sft", "reward", "dpo", "ppo")


def embedded_workspace(method: str, *extra: str) -> Callable[[Path], list[str]]:
    """The run.py overrides of one `mfu_124m` job (`method` on the embedded task at 124M; then
    `extra`), its upstream SFT policy and reward model built once in the workspace root."""

    def overrides(root: Path) -> list[str]:
        ws = SimpleNamespace(root=root)
        upstream = _embedded_upstream(ws)
        return [*_base(ws), *_method_args(method, False), *QUIET, *upstream, *extra]

    return overrides


def section_mfu_124m(ws: Any, reps: int) -> dict[str, Any]:
    upstream = _embedded_upstream(ws)
    return _mfu_section(
        ws,
        reps,
        "124m",
        lambda m: [*_base(ws), *_method_args(m, ws.quick), *QUIET, *upstream],
        "embedded task",
    )


def _long_method_args(method: str, quick: bool) -> list[str]:
    if method == "ppo":  # one iteration of the defaults: 64 prompts, 4 epochs of 2 minibatches
        return ["method=ppo", "method.max_steps=1", "method.reward=model", "eval.greedy=false"]
    return [f"method={method}", f"method.max_steps={1 if quick else 2}"]


def section_mfu_124m_long(ws: Any, reps: int) -> dict[str, Any]:
    """`mfu_124m` on UltraFeedback-length rows (the seed job's data, a 512-token budget): the
    same four methods with their defaults, from the seed job's SFT policy and reward model."""
    root = Path(ws.root)
    seed_ours_workspace(root)  # the seed job's SFT policy, data and reward model ("warm")
    upstream = [
        f"upstream.sft.path={_seed_sft(ws)}",
        f"upstream.reward.path={root / 'warm' / 'model'}",
    ]
    return _mfu_section(
        ws,
        reps,
        "124m-long",
        lambda m: [
            *_base(ws),
            *_seed_data(ws),
            *_budget(512),
            *_long_method_args(m, ws.quick),
            *QUIET,
            *upstream,
            "model.gradient_checkpointing=false",  # as mfu_124m: recomputation is not counted
        ],
        "UltraFeedback-length rows (512-token budget)",
    )


def _mfu_section(
    ws: Any, reps: int, tag: str, args_for: Callable[[str], list[str]], data_label: str
) -> dict[str, Any]:
    """Tokens/s and MFU of the four methods, interleaved, against the bf16 matmul roofline
    measured first (PPO: rollout and update apart)."""
    roof = roofline(SHAPE["n_embd"], SHAPE["vocab"])
    peak = roof["bf16"]["peak"] * 1e9
    runs = interleaved(
        {m: lambda m=m: ws.run(f"{tag}-{m}", args_for(m)) for m in METHODS_124M}, reps
    )
    data: dict[str, Any] = {"roofline_gflops": {k: v["peak"] for k, v in roof.items()}}
    rows = [
        f"GPT-2 shape (124M), {data_label}, precision=auto; bf16 matmul roofline "
        f"{roof['bf16']['peak']:.0f} GFLOP/s (fp32 {roof['fp32']['peak']:.0f}), measured first",
        "",
        "| method | precision | loop s | trained tokens/s | peak RSS MB | MFU (bf16 roofline) |",
        "|---|---|---|---|---|---|",
    ]
    for method, measured in runs.items():
        ms = [m.metrics for m in measured]
        fpt = method_flops(method, SHAPE["n_embd"], SHAPE["n_layer"], SHAPE["vocab"])
        rss = [m.peak_rss_mb for m in measured]
        if method == "ppo":
            seq = [m["throughput/sequence_tokens_total"] for m in ms]
            resp = [m["throughput/tokens_total"] for m in ms]
            roll = [m["time/rollout_total_s"] for m in ms]
            upd = [m["time/update_total_s"] for m in ms]
            mfu_r, mfu_u = (
                median(
                    [
                        fpt[phase].total(t, r) / s / peak
                        for t, r, s in zip(seq, resp, secs, strict=True)
                    ]
                )
                for phase, secs in (("rollout", roll), ("update", upd))
            )
            tps = [t / (r + u) for t, r, u in zip(seq, roll, upd, strict=True)]
            data[method] = {
                "rollout_s": roll,
                "update_s": upd,
                "sequence_tokens_per_s": tps,
                "mfu_rollout": mfu_r,
                "mfu_update": mfu_u,
                "peak_rss_mb": rss,
            }
            rows.append(
                f"| ppo | {ms[0].get('model/precision')} | rollout {spread(roll)}, update "
                f"{spread(upd)} | {spread(tps)} (prompt+response) | {spread(rss)} | "
                f"rollout {mfu_r:.1%}, update {mfu_u:.1%} |"
            )
            continue
        loop = [m["time/train_s"] for m in ms]
        tps = [m["throughput/tokens_per_s"] for m in ms]
        mfu = fpt["train"].total(median(tps)) / peak
        data[method] = {"loop_s": loop, "tokens_per_s": tps, "mfu": mfu, "peak_rss_mb": rss}
        rows.append(f"| {method} | {ms[0].get('model/precision')} | {spread(loop)} | "
                    f"{spread(tps)} | {spread(rss)} | {mfu:.1%} |")  # fmt: skip
    rows += ["", "Targets: >= 50% for sft, reward, dpo; PPO update >= 40%."]
    return {"data": data, "table": rows}


# ------------------------------------------------------------------------------ huge pages
def _loop_s(method: str, metrics: dict[str, Any]) -> float:
    """The training loop's seconds; PPO's rollout + update (its loop also saves a checkpoint)."""
    if method == "ppo":
        return metrics["time/rollout_total_s"] + metrics["time/update_total_s"]
    return metrics["time/train_s"]


# glibc's mmap threshold otherwise rises to the largest block freed (up to 32 MB), so torch's
# 2-32 MB tensors land in the heap, and torch's huge-page advice then marks heap ranges that
# later hold small blocks: khugepaged refills their trimmed pages (benchmarks/NOTES.md).
MMAP_2MB = {"MALLOC_MMAP_THRESHOLD_": str(2 << 20)}


def _two_settings(ws: Any, reps: int, tag: str, envs: dict[str, dict[str, str]]) -> dict:
    """The four methods of `mfu_124m` under two environments (`envs`: label -> variables),
    interleaved: loop seconds and peak RSS per method, and the first's loop over the second's."""
    upstream = _embedded_upstream(ws)
    (a, env_a), (b, env_b) = envs.items()
    settings = {
        f"{m}|{label}": lambda m=m, label=label, env=env: ws.run(
            f"124m-{m}-{tag}-{label}",
            [*_base(ws), *_method_args(m, ws.quick), *QUIET, *upstream],
            child_env(**env),
        )
        for m in METHODS_124M
        for label, env in envs.items()
    }
    runs = interleaved(settings, reps)
    rows = [
        f"| method | loop s, {a} | loop s, {b} | speed-up (medians) | peak RSS MB, {a} | {b} |",
        "|---|---|---|---|---|---|",
    ]
    data: dict[str, Any] = {}
    for method in METHODS_124M:
        parts = ("rollout", "update") if method == "ppo" else ()
        entry = {
            label: {
                "loop_s": [_loop_s(method, m.metrics) for m in ms],
                "peak_rss_mb": [m.peak_rss_mb for m in ms],
                **{k: [m.metrics[f"time/{k}_total_s"] for m in ms] for k in parts},
            }
            for label in (a, b)
            for ms in [runs[f"{method}|{label}"]]
        }
        entry["speedup"] = median(entry[a]["loop_s"]) / median(entry[b]["loop_s"])
        data[method] = entry
        rows.append(
            f"| {method}{' (rollout + update)' if method == 'ppo' else ''} | "
            f"{spread(entry[a]['loop_s'])} | {spread(entry[b]['loop_s'])} | "
            f"{entry['speedup']:.2f}x | {spread(entry[a]['peak_rss_mb'])} | "
            f"{spread(entry[b]['peak_rss_mb'])} |"
        )
    return {"data": data, "table": rows}


def section_huge_pages_124m(ws: Any, reps: int) -> dict[str, Any]:
    envs = {"off": {"THP_MEM_ALLOC_ENABLE": "0"}, "on": {"THP_MEM_ALLOC_ENABLE": "1"}}
    result = _two_settings(ws, reps, "thp", envs)
    intro = (
        "GPT-2 shape (124M), embedded task, precision=auto; torch's huge pages for tensors of "
        f"2 MB and more off (THP_MEM_ALLOC_ENABLE=0) and on (1). {machine()}"
    )
    return result | {"table": [intro, "", *result["table"]]}


def section_heap_huge_pages_124m(ws: Any, reps: int) -> dict[str, Any]:
    on = {"THP_MEM_ALLOC_ENABLE": "1"}
    result = _two_settings(ws, reps, "heap", {"heap": on, "mmap2mb": on | MMAP_2MB})
    intro = (
        "GPT-2 shape (124M), embedded task, precision=auto, huge pages on; glibc's own mmap "
        "threshold (heap: rises to 32 MB) against one fixed at 2 MB (mmap2mb: every tensor "
        f"torch advises gets its own mapping). {machine()}"
    )
    return result | {"table": [intro, "", *result["table"]]}


# ------------------------------------------------------------------------------ checkpointing
def section_checkpointing_124m(ws: Any, reps: int) -> dict[str, Any]:
    steps = 3 if ws.quick else 8
    sft = _seed_sft(ws)
    settings = {
        flag: lambda flag=flag: ws.run(
            f"gc-{flag}",
            _seed_ours(ws, sft, 512, steps, [f"model.gradient_checkpointing={flag}"]),
        )
        for flag in ("false", "true")
    }
    runs = interleaved(settings, reps)
    rows = [
        f"Seed job's workload (reward + LoRA r={SEED_LORA_R}, 124M, max_length 512, "
        f"{SEED_PAIRS_PER_STEP} pairs/step, {steps} steps)",
        "",
        "| gradient_checkpointing | loop s | tokens/s | peak RSS MB |",
        "|---|---|---|---|",
    ]
    data: dict[str, Any] = {}
    for flag, measured in runs.items():
        loop = [m.metrics["time/train_s"] for m in measured]
        tps = [m.metrics["throughput/tokens_per_s"] for m in measured]
        rss = [m.peak_rss_mb for m in measured]
        data[flag] = {"loop_s": loop, "tokens_per_s": tps, "peak_rss_mb": rss}
        rows.append(f"| {flag} | {spread(loop)} | {spread(tps)} | {spread(rss)} |")
    time_ratio = median(data["true"]["loop_s"]) / median(data["false"]["loop_s"])
    saved = median(data["false"]["peak_rss_mb"]) - median(data["true"]["peak_rss_mb"])
    data |= {"time_ratio": time_ratio, "rss_saved_mb": saved}
    rows.append(f"\non/off: {time_ratio:.2f}x loop time, {saved:.0f} MB less peak RSS")
    return {"data": data, "table": rows}


SECTIONS_124M = {
    "seed_job": section_seed_job,
    "seed_job_512": _seed_job_at(512),
    "seed_job_1024": _seed_job_at(1024),
    "mfu_124m": section_mfu_124m,
    "mfu_124m_long": section_mfu_124m_long,
    "checkpointing_124m": section_checkpointing_124m,
    "huge_pages_124m": section_huge_pages_124m,
    "heap_huge_pages_124m": section_heap_huge_pages_124m,
}
