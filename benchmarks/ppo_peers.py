"""Generated tokens/s of our PPO against our RLOO/GRPO and TRL 1.12's PPO, matched settings.

    python benchmarks/ppo_peers.py --quick --threads 1      # smoke test, all peers, 3 reps
    python benchmarks/ppo_peers.py --threads 1              # 10 iterations x 64 prompts, 3 reps
    python benchmarks/ppo_peers.py --work /tmp/ppo_peers    # reuse models, prompts and the venv

Measured on the 2-core machine with other jobs running (load ~3), `--threads 1`, models,
prompts and venv already in `--work`: `--quick` 1 min 44 s, the default 7 min 44 s. A fresh
work dir adds ~2.5 min (SFT + reward model) and a missing venv ~1 min. `--threads 1` (OMP/MKL
threads of every run) is what to use while anything else runs: with the libraries' default of
one thread per core, the same runs on the same busy machine varied 10x (2-30 s), at 1 thread
within a few percent.

Throughput = generated response tokens (EOS included) / wall seconds of the train loop, each
run in its own process, runs interleaved (A B C D E A B C D E ...) so drift on a shared machine
hits every peer alike; peak RSS per process from `wait4`. Peers:

| peer | trainer | reward | what is timed |
|---|---|---|---|
| ours-gold | `run.py method=ppo method.reward=gold` | VADER gold function | `time/train_s` |
| rloo | `run.py method=rloo method.reward=gold` (`RLOOTrainer`) | the same | `time/train_s` |
| grpo | `run.py method=grpo method.reward=gold` (`GRPOTrainer`) | the same | `time/train_s` |
| ours-rm | `run.py method=ppo method.reward=model` | our reward model | `time/train_s` |
| trl112-ppo | TRL 1.12 `experimental.ppo.PPOTrainer` (venv) | our reward model | `train()` |
| ours-vh (by name only) | ours-gold + `method.critic=value_head` | the same | `time/train_s` |

Ratios: ours-gold / rloo and ours-gold / grpo (target >= 1.3, the performance issue's),
ours-rm / trl112-ppo (target >= 1.2; >= 2 for models other than `tiny`). RLOO and GRPO run
through the framework itself, as a user runs them (same models, data, reward adapter,
throughput keys), so the ratio is what a user of `experiment=methods` sees. TRL 1.12's
PPOTrainer only takes a reward *model*, hence the reward-model pair. Its venv
(`benchmarks/peers/.venv-trl112`, git-ignored) is built on first use: torch (the CPU build this
Python has, pinned first so pip takes no CUDA build), then trl==1.12.0 with this Python's
transformers and accelerate versions, so only the trainer code differs.

Models: a tiny GPT-2 SFT policy and reward model built once with our framework (`debug=fast`,
offline) in the work dir; every peer loads exactly these dirs. Prompts: the embedded task's
training prompts in the order our PromptSchedule draws them (seed 0), exported per step to
`prompts_*.jsonl` in the work dir.

Settings mapping (one iteration = a rollout of B prompts, then ppo_epochs passes of
B / micro optimiser steps on micro-batches of `micro`; default B=64, micro=32, epochs=4):
- ours: method.rollout_batch_size=B, per_device_train_batch_size=micro, ppo_epochs, max_steps
  = iterations, response_length, temperature; everything else at conf/method/ppo.yaml's
  defaults (kl_coef, cliprange, lr, Adam eps), which are passed to the peers too. Periodic
  evaluation and intermediate checkpoints are off (eval_steps/save_steps=100000); the final
  checkpoint save is inside our timed loop (the peers save nothing).
- RLOO / GRPO (`run.py method=rloo|grpo`): num_generations=G (4, conf/method/rloo.yaml's),
  B/G unique prompts x G samples = B completions per generation, drawn from the same training
  prompts by TRL's sampler; per_device_train_batch_size=micro, steps_per_generation=B/micro,
  num_iterations=ppo_epochs, max_steps=iterations x epochs x B/micro: the same completions per
  generation and optimiser steps per generation as ours. beta, epsilon, lr, adam_epsilon,
  temperature: conf/method/rloo.yaml's and grpo.yaml's, which mirror ppo.yaml's.
  Inherent differences: no critic (ours trains a separate value model), and with
  num_iterations > 1 TRL recomputes the old log-probs in an extra forward pass.
- TRL 1.12 PPO: per_device_train_batch_size=B with gradient_accumulation_steps=1,
  num_mini_batches=B/micro, local_rollout_forward_batch_size=B: its update loop then runs
  minibatches of `micro` with one optimiser step each, as ours (exact only for our
  gradient_accumulation_steps=1, enforced). total_episodes=iterations x B over exactly our
  prompts (its dataloader shuffles them), stop_token=eos, value model and reward model = our
  reward model dir (as our critic_init=auto does), kl_coef, cliprange(_value), vf_coef,
  gamma, lam, lr, Adam eps as ours.
Tokens are counted the same way everywhere: up to and including the first EOS, or the whole
response if there is none (ours: `throughput/tokens_total`; RLOO/GRPO: lengths of the
`completion_ids` their reward function gets, `throughput/generated_tokens`; TRL 1.12: from
the sequences its generate returns).

Caveats. The `debug=fast` SFT policy rarely emits EOS, so nearly every response is the full
response_length for every peer (TRL 1.12's generated width is 24 of 24): how each trainer
handles early EOS (padding, stopping) is not exercised. Our timed loop includes the final
checkpoint save (the peers save nothing); "rollout + update" below the table excludes it. Our
process also runs a final evaluation after the timed loop, which can add to its peak RSS.
The ratios compare whole trainers, including algorithmic differences (critic or not, extra
log-prob passes), not just implementation speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import yaml
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, child_env, run_measured  # noqa: E402

PEERS_DIR = ROOT / "benchmarks" / "peers"
VENV = PEERS_DIR / ".venv-trl112"
TRL112 = "1.12.0"

# Our trainer's defaults (conf/method/ppo.yaml) with few enough iterations that each run takes
# well under a minute; --quick shrinks it to a smoke test.
DEFAULT = dict(
    iterations=10,
    rollout_batch_size=64,
    response_length=24,
    ppo_epochs=4,
    micro_batch_size=32,
    gradient_accumulation_steps=1,
    temperature=1.0,
    num_generations=4,
)
QUICK = DEFAULT | dict(iterations=2, rollout_batch_size=16, micro_batch_size=16, ppo_epochs=2)
# conf/method/ppo.yaml keys handed to the peers so their optimiser and losses match ours
SHARED_KEYS = ("kl_coef", "cliprange", "cliprange_value", "vf_coef", "gamma", "lam",
               "learning_rate", "adam_eps", "max_length")  # fmt: skip

PEERS = {  # name: (label, reward, ratio numerator)
    "ours-gold": ("ours PPO", "gold fn", None),
    "rloo": ("ours RLOO (TRL 1.16 inside)", "gold fn", "ours-gold"),
    "grpo": ("ours GRPO (TRL 1.16 inside)", "gold fn", "ours-gold"),
    "ours-rm": ("ours PPO", "reward model", None),
    "trl112-ppo": ("TRL 1.12 PPO", "reward model", "ours-rm"),
    "ours-vh": ("ours PPO, value head on the policy", "gold fn", None),
}
# our runs' reward and critic (ours-vh: `method.critic=value_head`, no separate critic model,
# as RLOO and GRPO train none; not in the default peer list)
OURS = {
    "ours-gold": ["method.reward=gold"],
    "ours-rm": ["method.reward=model"],
    "ours-vh": ["method.reward=gold", "method.critic=value_head"],
}
DEFAULT_PEERS = [p for p in PEERS if p != "ours-vh"]
# ours / peer, from the issues: the tiny default's, and GPT-2 size's (the performance issue:
# >= 2x TRL 1.12 PPO at 124M)
TARGETS = {"rloo": 1.3, "grpo": 1.3, "trl112-ppo": 1.2}
TARGETS_AT_SIZE = TARGETS | {"trl112-ppo": 2.0}


def targets(model: str) -> dict[str, float]:
    return TARGETS if model == "tiny" else TARGETS_AT_SIZE


# ------------------------------------------------------------------------------ process
def run_child(args: list[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run `args` to completion with output in `log`; its peak RSS in MB (raises if it failed)."""
    return run_measured([str(a) for a in args], log, env=env).peak_rss_mb


def result_line(log: Path) -> dict:
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"no RESULT line in {log}")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -------------------------------------------------------------------------------- setup
def build_models(work: Path, model: str) -> tuple[Path, Path]:
    """SFT policy and reward model dirs, trained once with our framework (offline)."""
    dirs = {}
    for stage, method in (("sft", "sft"), ("rm", "reward")):
        run_dir = work / stage
        if not (run_dir / "model" / "config.json").exists():
            print(f"building {stage} (debug=fast, model={model}) in {run_dir}", flush=True)
            args = [sys.executable, "run.py", f"method={method}", "debug=fast", "logger=none"]
            args += [f"model={model}"]
            args += [f"paths.root_dir={work}", f"hydra.run.dir={run_dir}"]
            run_child(args, work / f"build_{stage}.log")
        dirs[stage] = run_dir / "model"
    return dirs["sft"], dirs["rm"]


def export_prompts(work: Path, settings: dict) -> Path:
    """Our PPO run's prompts, one JSON line per iteration, in the order our trainer draws them."""
    B, n, seed = settings["rollout_batch_size"], settings["iterations"], settings["seed"]
    path = work / f"prompts_{n}x{B}_seed{seed}.jsonl"
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT))
    import datasets

    from rlhf_exp.config.schema import DatasetSpec, build
    from rlhf_exp.data import load_task
    from rlhf_exp.methods.ppo.rollout import PromptSchedule

    # the dataset group exactly as `run.py method=ppo debug=fast` composes it
    cfg = subprocess.run(
        [sys.executable, "run.py", "--cfg", "job", "--package", "dataset", "method=ppo",
         "debug=fast", f"model={settings['model']}", f"paths.root_dir={work}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    spec = build(DatasetSpec, yaml.safe_load(cfg), "dataset")
    datasets.disable_progress_bars()
    task = load_task(spec, None, work / "outputs" / "cache")  # paths.cache_dir's default
    source = task.sft_train if task.sft_train is not None else task.pref_train
    prompts = list(dict.fromkeys(source["prompt"]))  # as methods/ppo/__init__.py does
    schedule = PromptSchedule(prompts, seed, B, 0, 1)
    lines = (json.dumps({"step": k, "prompts": schedule(k)}) + "\n" for k in range(n))
    path.write_text("".join(lines))
    return path


def model_precision(model: str) -> str:
    """What `model.precision` of the model group settles to on this machine (auto: bf16 where
    the CPU multiplies bf16 natively)."""
    sys.path.insert(0, str(ROOT))
    from rlhf_exp.hardware import auto_precision

    precision = yaml.safe_load((ROOT / "conf/model" / f"{model}.yaml").read_text()).get(
        "precision", "fp32"
    )
    return auto_precision()[0] if precision == "auto" else precision


def ensure_trl112_venv() -> Path:
    """Python of a venv with trl==1.12.0 and this Python's torch/transformers/accelerate."""
    python = VENV / "bin" / "python"
    probe = "import trl, transformers; print(trl.__version__, transformers.__version__)"
    want = f"{TRL112} {version('transformers')}"
    if python.exists():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout
        if found.strip() == want:
            return python
    print(f"building {VENV} (torch, then trl=={TRL112})", flush=True)
    subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    pip = [python, "-m", "pip", "install", "--quiet"]
    # torch alone first, pinned to this Python's build: a bare `pip install torch` (or one
    # pulled in by trl) would fetch the multi-GB CUDA build
    subprocess.run([*pip, f"torch=={version('torch').split('+')[0]}"], check=True)
    pins = [f"trl=={TRL112}", f"transformers=={version('transformers')}"]
    subprocess.run([*pip, *pins, f"accelerate=={version('accelerate')}"], check=True)
    return python


# -------------------------------------------------------------------------------- peers
def finished_metrics(run_dir: Path, peer: str) -> dict:
    """A finished run's metrics; its checkpoints and model go (GBs each at 124M: a full
    round of peers filled the disk)."""
    m = json.loads((run_dir / "metrics.json").read_text())
    for artifact in ("checkpoints", "model"):
        shutil.rmtree(run_dir / artifact, ignore_errors=True)
    if m.get("status") == "failed":
        raise RuntimeError(f"{peer} failed: {m.get('error')}")
    return m


def run_ours(peer: str, s: dict, work: Path, tag: str, env: dict[str, str]) -> dict:
    run_dir = work / "runs" / f"{tag}_{peer}"
    args = [sys.executable, "run.py", "method=ppo", "debug=fast", "logger=none"]
    args += [f"model={s['model']}", f"seed={s['seed']}"]
    args += [f"paths.root_dir={work}", f"hydra.run.dir={run_dir}"]
    args += [f"upstream.sft.path={s['policy']}", f"upstream.reward.path={s['reward_model']}"]
    args += [
        *OURS[peer],
        f"method.max_steps={s['iterations']}",
        f"method.rollout_batch_size={s['rollout_batch_size']}",
        f"method.response_length={s['response_length']}",
        f"method.ppo_epochs={s['ppo_epochs']}",
        f"method.per_device_train_batch_size={s['micro_batch_size']}",
        f"method.gradient_accumulation_steps={s['gradient_accumulation_steps']}",
        f"method.temperature={s['temperature']}",
        "method.eval_steps=100000",  # no periodic evaluation inside the timed loop
        "method.save_steps=100000",  # only the final checkpoint (always saved)
        "eval.num_prompts=8",  # the final evaluation runs after the timed loop
        "eval.greedy=false",
    ]
    rss = run_child(args, work / "logs" / f"{tag}_{peer}.log", env)
    m = finished_metrics(run_dir, peer)
    tokens, seconds = m["throughput/tokens_total"], m["time/train_s"]
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": rss,
        # rollout + update only (no checkpoint save, no bookkeeping)
        "tokens_per_s_rollout_update": m["throughput/tokens_per_s_total"],
        "rollout_s": m["time/rollout_total_s"],
        "update_s": m["time/update_total_s"],
        "self_reported_peak_rss_mb": m.get("memory/peak_rss_mb"),
        "generations": m.get("train/global_step"),
    }


def run_online(peer: str, s: dict, work: Path, tag: str, env: dict[str, str]) -> dict:
    """`run.py method=rloo|grpo` on the same models and gold reward, matched sizes."""
    B, micro, G = s["rollout_batch_size"], s["micro_batch_size"], s["num_generations"]
    run_dir = work / "runs" / f"{tag}_{peer}"
    args = [sys.executable, "run.py", f"method={peer}", "debug=fast", "logger=none"]
    args += [f"model={s['model']}", f"seed={s['seed']}"]
    args += [f"paths.root_dir={work}", f"hydra.run.dir={run_dir}"]
    args += [f"upstream.sft.path={s['policy']}", f"upstream.reward.path={s['reward_model']}"]
    args += [
        "method.reward=gold",
        f"method.max_steps={s['iterations'] * s['ppo_epochs'] * B // micro}",
        f"method.num_generations={G}",
        f"method.per_device_train_batch_size={micro}",
        f"method.steps_per_generation={B // micro}",
        f"method.num_iterations={s['ppo_epochs']}",
        f"method.max_completion_length={s['response_length']}",
        f"method.temperature={s['temperature']}",
        "method.eval_steps=100000",  # no periodic evaluation inside the timed loop
        "method.save_steps=100000",
        "eval.num_prompts=8",  # the final evaluation runs after the timed loop
        "eval.greedy=false",
        "eval.reward_model=false",
    ]
    rss = run_child(args, work / "logs" / f"{tag}_{peer}.log", env)
    m = finished_metrics(run_dir, peer)
    tokens, seconds = m["throughput/generated_tokens"], m["time/train_s"]
    return {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "peak_rss_mb": rss,
        "generations": m.get("train/generations"),
    }


def run_trl112(s: dict, work: Path, tag: str, env: dict[str, str], venv_python: Path) -> dict:
    out = work / "runs" / f"{tag}_trl112-ppo"
    args = [str(venv_python), str(PEERS_DIR / "trl112_ppo.py")]
    args += ["--settings", str(work / "settings.json"), "--output-dir", str(out)]
    log = work / "logs" / f"{tag}_trl112-ppo.log"
    quiet = {"TOKENIZERS_PARALLELISM": "false", "TRL_EXPERIMENTAL_SILENCE": "1"}
    rss = run_child(args, log, env | quiet | {"HF_HUB_OFFLINE": "1"})
    r = result_line(log)
    shutil.rmtree(out, ignore_errors=True)  # its saved model: see finished_metrics
    return r | {"tokens_per_s": r["tokens"] / r["seconds"], "peak_rss_mb": rss}


# --------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3, help="measured runs per peer")
    parser.add_argument("--warmup", type=int, help="untimed rounds first (default 1, quick 0)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test")
    parser.add_argument("--iterations", type=int, help="PPO iterations (rollouts) per run")
    parser.add_argument(
        "--peers", default=",".join(DEFAULT_PEERS), help=f"comma-separated, of {', '.join(PEERS)}"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP/MKL threads of every run (default: the libraries' own, all cores); 1 is "
        "steadier when other jobs share the machine",
    )
    parser.add_argument("--work", type=Path, help="work dir to reuse (default: a new tmp dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ppo_peers.json")
    parser.add_argument(
        "--model",
        default="tiny",
        help="model group of every run (e.g. gpt2_shape: 124M, bf16 here; TRL 1.12 then "
        "trains with bf16=True too)",
    )
    opts = parser.parse_args()
    peers = [p for p in opts.peers.split(",") if p]
    if unknown := set(peers) - set(PEERS):
        parser.error(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    warmup = opts.warmup if opts.warmup is not None else (0 if opts.quick else 1)

    work = (opts.work or Path(tempfile.mkdtemp(prefix="ppo_peers_"))).resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    # composed, so interpolations resolve (max_length is the dataset's token budget)
    ours_defaults = OmegaConf.to_container(
        OmegaConf.merge(
            {"dataset": yaml.safe_load((ROOT / "conf/dataset/sentiment.yaml").read_text())},
            {"method": yaml.safe_load((ROOT / "conf/method/ppo.yaml").read_text())},
        ),
        resolve=True,
    )["method"]
    s = (QUICK if opts.quick else DEFAULT) | {k: ours_defaults[k] for k in SHARED_KEYS}
    s["seed"], s["model"] = 0, opts.model
    s["bf16"] = model_precision(opts.model) == "bf16"
    if opts.iterations:
        s["iterations"] = opts.iterations
    B, micro, G = s["rollout_batch_size"], s["micro_batch_size"], s["num_generations"]
    if s["gradient_accumulation_steps"] != 1 or B % micro or B % G or micro % G:
        raise SystemExit("the peer mapping needs accumulation 1 and micro, G dividing B")
    policy, reward_model = build_models(work, opts.model)
    s |= {"policy": str(policy), "reward_model": str(reward_model)}
    s["prompts"] = str(export_prompts(work, s))
    (work / "settings.json").write_text(json.dumps(s, indent=1))
    venv_python = ensure_trl112_venv() if "trl112-ppo" in peers else None
    print(f"work dir {work}\nsettings {json.dumps(s)}", flush=True)
    env = child_env()  # each child's own THP_MEM_ALLOC_ENABLE: see common.child_env
    if opts.threads:
        env |= {"OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}

    def run(peer: str, tag: str) -> dict:
        # the machine may be shared: record its load so a noisy repetition can be spotted
        load = os.getloadavg()[0]
        if peer.startswith("ours-"):
            r = run_ours(peer, s, work, tag, env)
        elif peer == "trl112-ppo":
            r = run_trl112(s, work, tag, env, venv_python)
        else:
            r = run_online(peer, s, work, tag, env)
        return r | {"loadavg_1m_before": load, "loadavg_1m_after": os.getloadavg()[0]}

    started = time.perf_counter()
    for w in range(warmup):
        for peer in peers:
            r = run(peer, f"warmup{w}")
            print(f"warm-up {peer}: {r['tokens_per_s']:.0f} tok/s (not counted)", flush=True)
    raw: dict[str, list[dict]] = {p: [] for p in peers}
    for rep in range(opts.reps):
        for peer in peers:  # interleaved: A B C D E A B C D E ...
            r = run(peer, f"rep{rep}")
            raw[peer].append(r)
            print(
                f"rep {rep} {peer:<11} {r['tokens']:>7.0f} tokens / {r['seconds']:6.2f} s = "
                f"{r['tokens_per_s']:7.0f} tok/s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                f"load {r['loadavg_1m_before']:.1f}",
                flush=True,
            )

    summary = {}
    for peer in peers:
        rates = [r["tokens_per_s"] for r in raw[peer]]
        summary[peer] = {
            "label": PEERS[peer][0],
            "reward": PEERS[peer][1],
            "tokens_per_s_median": statistics.median(rates),
            "tokens_per_s_min": min(rates),
            "tokens_per_s_max": max(rates),
            "peak_rss_mb_median": statistics.median(r["peak_rss_mb"] for r in raw[peer]),
            "tokens_median": statistics.median(r["tokens"] for r in raw[peer]),
        }
    for peer in peers:
        ours = PEERS[peer][2]
        if ours in summary:
            ratio = summary[ours]["tokens_per_s_median"] / summary[peer]["tokens_per_s_median"]
            summary[peer]["ratio_ours_over_peer"] = ratio
            # best run against best run: less sensitive to other jobs on a shared machine
            best = summary[ours]["tokens_per_s_max"] / summary[peer]["tokens_per_s_max"]
            summary[peer]["ratio_ours_over_peer_best"] = best
            if peer in (wanted := targets(opts.model)):
                summary[peer]["target"] = wanted[peer]
                summary[peer]["meets_target"] = ratio >= wanted[peer]

    table = [
        f"generated tokens/s, median of {opts.reps} interleaved runs",
        "",
        "| peer | reward | generated tok/s (median) | min-max | peak RSS MB | ours / peer "
        "(medians) | ours / peer (best runs) |",
        "|---|---|---|---|---|---|---|",
    ]
    for peer, m in summary.items():
        ratio = m.get("ratio_ours_over_peer")
        cell = "" if ratio is None else f"{ratio:.2f}x"
        if "target" in m:
            verdict = "meets" if m["meets_target"] else "MISSES"
            cell += f" ({verdict} target >= {m['target']}x)"
        best = m.get("ratio_ours_over_peer_best")
        table.append(
            f"| {m['label']} ({peer}) | {m['reward']} | {m['tokens_per_s_median']:.0f} | "
            f"{m['tokens_per_s_min']:.0f}-{m['tokens_per_s_max']:.0f} | "
            f"{m['peak_rss_mb_median']:.0f} | {cell} | {'' if best is None else f'{best:.2f}x'} |"
        )
    print("\n" + "\n".join(table))
    busiest = max(r["loadavg_1m_before"] for runs in raw.values() for r in runs)
    own = opts.threads or os.cpu_count() or 1  # the load our own previous child leaves
    busy = busiest > own + 1
    if busy:
        print(
            f"\nWARNING: 1-min load average reached {busiest:.1f} on {os.cpu_count()} CPUs before "
            "a measured run: other jobs shared the machine, so these numbers are unreliable"
        )
    for peer in ("ours-gold", "ours-rm"):
        if peer in raw:
            alt = statistics.median(r["tokens_per_s_rollout_update"] for r in raw[peer])
            print(f"\n{peer}: {alt:.0f} tok/s over rollout + update time alone "
                  "(excludes the final checkpoint save and per-step bookkeeping)")  # fmt: skip

    venv_versions = raw.get("trl112-ppo", [{}])[0].get("versions")
    report = {
        "metric": "generated response tokens (EOS included) / train-loop wall seconds",
        "settings": s,
        "reps": opts.reps,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "table": table,
        "warmup_rounds": warmup,
        "threads": opts.threads,
        "max_loadavg_1m_before_run": busiest,
        "machine_busy": busy,
        "quick": opts.quick,
        "summary": summary,
        "raw": raw,
        "versions": {
            "python": platform.python_version(),
            "torch": version("torch"),
            "transformers": version("transformers"),
            "accelerate": version("accelerate"),
            "trl": version("trl"),
            "trl112_venv": venv_versions,
        },
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "work_dir": str(work),
        "bench_wall_s": round(time.perf_counter() - started, 1),
    }
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    opts.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nwrote {opts.out}")


if __name__ == "__main__":
    main()
