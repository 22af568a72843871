"""What every benchmark script shares: running a command as a measured child process,
interleaving settings so machine drift hits them alike, and medians."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PYTHON = sys.executable


@dataclass
class Measured:
    """One finished child process: wall seconds, its own peak RSS and what it wrote."""

    wall_s: float
    peak_rss_mb: float
    metrics: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None


def run_measured(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Measured:
    """Run `args` from the project root (or `cwd`: another checkout's) to completion; raises
    with the log path on failure.

    Peak RSS comes from `wait4`: the kernel's maximum resident set of that child alone.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(args), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env or child_env()
        )
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    if proc.returncode != 0:
        lines = log.read_text(errors="replace").strip().splitlines()
        tail = [ln for ln in lines if ln.strip() and "HYDRA_FULL_ERROR" not in ln][-1:] or [
            "(no output)"
        ]
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {tail[0]}; see {log}")
    return Measured(wall, usage.ru_maxrss / 1024)  # Linux reports KiB


def child_env(**extra: str) -> dict[str, str]:
    """The environment of measured children: offline, no tokenizer thread pool fights.

    Without THP_MEM_ALLOC_ENABLE unless `extra` names it: each child runs what its own code
    asks for (run.py turns torch's huge pages on, a bare TRL script does not), not the default
    this harness picked up by importing rlhf_exp."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def run_py(
    overrides: Sequence[str],
    run_dir: Path,
    log: Path,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] = (),
    cwd: Path = ROOT,
) -> Measured:
    """`python [LAUNCHER] run.py OVERRIDES` into `run_dir`; its metrics.json comes back with it.

    `launcher` is e.g. `-m accelerate.commands.launch --num_processes 2`; `cwd` the checkout
    whose run.py (and rlhf_exp) runs.
    """
    command = [PYTHON, *launcher, "run.py", *overrides, f"hydra.run.dir={run_dir}"]
    measured = run_measured(command, log, env=env, cwd=cwd)
    measured.metrics = json.loads((run_dir / "metrics.json").read_text())
    measured.run_dir = run_dir
    return measured


def interleaved(
    settings: dict[str, Callable[[], Measured]], reps: int
) -> dict[str, list[Measured]]:
    """Call each setting's `run()` in turn, `reps` rounds, the order reversed every other
    round (A B C, C B A, A B C, ...): whatever favours the first or the last run of a round
    (page cache, clock, memory left by the previous process) falls on each setting alike."""
    out: dict[str, list[Measured]] = {name: [] for name in settings}
    for rep in range(reps):
        order = list(settings.items())
        for name, run in order if rep % 2 == 0 else reversed(order):
            out[name].append(run())
            print(f"  {name} rep {rep}: {out[name][-1].wall_s:.1f} s", flush=True)
    return out


def interleaved_in(
    workspace: Path, settings: dict[str, Callable[[Path], Measured]], reps: int
) -> dict[str, list[Measured]]:
    """`interleaved`, each run given a run dir of its own: `workspace/NAME-N`, N counting that
    setting's runs from 1."""
    done = dict.fromkeys(settings, 0)

    def numbered(name: str) -> Callable[[], Measured]:
        def run() -> Measured:
            done[name] += 1
            return settings[name](workspace / f"{name}-{done[name]}")

        return run

    return interleaved({name: numbered(name) for name in settings}, reps)


@dataclass(frozen=True)
class TokenFlops:
    """Model FLOPs of one phase of a job: `per_token` for each (prompt + response) token the
    phase runs the model bodies over, `per_response_token` for each response token the LM head
    scores (PPO computes logits on response positions only: a prompt token's would be unused)."""

    per_token: float
    per_response_token: float = 0.0

    def total(self, tokens: float, response_tokens: float = 0.0) -> float:
        return tokens * self.per_token + response_tokens * self.per_response_token


def method_flops(
    method: str, n_embd: int, n_layer: int, vocab: int, ppo_epochs: int = 4
) -> dict[str, TokenFlops]:
    """Model FLOPs per token (Kaplan et al.): 2 per weight a forward multiplies by, 6 to train;
    embedding lookups cost nothing. The LM head (d x vocab) counts for policies, not for a
    reward model's scalar head: at the tiny model's size that head is ~40% of the compute.

    `sft`/`dpo`/`reward`: {"train"}. `ppo`, per rollout: {"rollout"}: sampling and the reference's
    log-probs (2 body + 2 head each), critic values and reward model (2 body each); {"update"}:
    each epoch trains policy (6 body + 6 head) and critic (6 body). The heads of both phases run
    on response positions only (`logits_to_keep`), so they count per response token.
    """
    body = 12 * n_layer * n_embd * n_embd  # attention 4d^2 + MLP 8d^2 per layer
    head = n_embd * vocab
    if method == "ppo":
        return {
            "rollout": TokenFlops(8 * body, 4 * head),
            "update": TokenFlops(ppo_epochs * 12 * body, ppo_epochs * 6 * head),
        }
    return {"train": TokenFlops(6 * (body if method == "reward" else body + head))}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> str:
    """`median (min-max)` for a table cell: 3 significant digits, whole numbers from 1,000."""

    def cell(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"

    return f"{cell(median(values))} ({cell(min(values))}-{cell(max(values))})"


def write_json(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def export_pairs(run_dir: Path, out: Path) -> Path:
    """The preference rows a framework run trained and evaluated on, as JSONL for the bare
    script (the held-out rows cut to `method.max_eval_samples`, as the run did)."""
    from omegaconf import OmegaConf

    from rlhf_exp.config.schema import validate
    from rlhf_exp.data import load_task
    from rlhf_exp.models import load_tokenizer

    run = validate(OmegaConf.load(run_dir / "config.yaml"))
    tokenizer = load_tokenizer(run.upstream.sft.path, run.model)
    task = load_task(run.dataset, tokenizer, Path(run.paths.cache_dir))
    n_test = min(run.method.max_eval_samples, len(task.pref_test))
    out.mkdir(parents=True, exist_ok=True)
    for split, ds in (("train", task.pref_train), ("test", task.pref_test.select(range(n_test)))):
        with (out / f"{split}.jsonl").open("w") as f:
            for row in ds:
                f.write(json.dumps({k: row[k] for k in ("prompt", "chosen", "rejected")}) + "\n")
    return out


def bare(ws: Any, label: str, args: list[str]) -> Measured:
    """`benchmarks/bare_trl.py ARGS`; its JSON line becomes the metrics."""
    run_dir = ws.next_dir(label)
    log = run_dir.with_suffix(".log")
    measured = run_measured([PYTHON, "benchmarks/bare_trl.py", *args, "--out", str(run_dir)], log)
    measured.metrics = json.loads(log.read_text().strip().splitlines()[-1])
    measured.run_dir = run_dir
    return measured


def machine() -> str:
    """The CPU by name, its cores and its bf16 flags: what every reported number depends on."""
    from rlhf_exp.hardware import cpu_flags

    flags = cpu_flags()
    bf16 = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    name = next(
        (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
         if ln.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return f"{name}, {len(os.sched_getaffinity(0))} cores, bf16: {bf16 or 'none'}"
