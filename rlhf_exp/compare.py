"""The comparison report of a sweep: a markdown table and plots built from finished job dirs.

    python -m rlhf_exp.compare outputs/multiruns/2026-11-23/20-00-00

Reads files only (each job's `.hydra/overrides.yaml`, `metrics.json`, `config.yaml`, its
`RUNNING` marker, `run.log` and TensorBoard events), never models, so it also reports on a
sweep that partly failed, was interrupted, or is still running. A job is
- finished: `metrics.json` without a `status`;
- failed: `status: failed`, a `metrics.json` that is not readable JSON (cut short), or no
  `metrics.json` and no marker (listed with the last error line of its log);
- interrupted: `status: interrupted` (a signal stopped it; it resumes when the sweep is run
  again), or a `RUNNING` marker whose process is gone (killed);
- running: a `RUNNING` marker of a live process (or of another host, which cannot be checked).
A run's method and knob (its method's KL knob: DPO's `beta`, PPO's `kl_coef`) come from its
metrics, else from the config it ran with (`config.yaml`, else Hydra's `.hydra/config.yaml`).

The score a sweep is judged by is picked once for the whole report (`report_score`): the gold
reward when any job logged one, else the learned reward model's score (real preference data
has no gold scorer), and every table, axis and bar title names which it is.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import socket
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

from rlhf_exp import frontier, overoptimization
from rlhf_exp.artifacts import atomic_write_text

log = logging.getLogger(__name__)

# Written by the runner into a job's dir while the job runs ({"pid": ..., "host": ...}) and
# removed when it ends, however it ends; a marker left behind means the process was killed.
RUNNING_MARKER = "RUNNING"


@dataclass(frozen=True)
class Score:
    """The reward a sweep's policies are compared by, and how the report names it."""

    key: str  # metrics.json key of the mean score (its interval: `<key>_ci_low/_ci_high`)
    title: str  # table column
    axis: str  # frontier y-axis
    win_key: str  # win rate against the SFT policy by this score
    win_title: str  # its table column
    bars_title: str  # its bar chart


GOLD = Score(
    "eval/gold_reward",
    "gold reward",
    "gold reward (mean)",
    "eval/win_rate_gold",
    "win rate (gold)",
    "win rate vs SFT (gold)",
)
# A learned RM is what PPO optimises, so the axis says it is not ground truth.
RM = Score(
    "eval/rm_reward",
    "RM score",
    "RM score (learned reward model; no gold reward)",
    "eval/win_rate_rm",
    "win rate (RM)",
    "win rate vs SFT (RM score)",
)
# Reward-model jobs: held-out pair accuracy next to what words alone reach on the same pairs
# (`rlhf_exp.lexical_baseline`); shown when any job logged them.
# Preference labels a run learned from, directly or through its reward model (data/policy_pairs).
LABELS_USED = "data/labels/used"
ACCURACY_COLUMNS = [
    ("eval/accuracy", "RM accuracy"),
    ("eval/accuracy_lexical_baseline", "lexical baseline accuracy"),
]
# Plotted for each method that logged them (PPO: the objective/*; DPO: train/rewards/*).
CURVE_TAGS = [
    "objective/scores",
    "objective/kl",
    "eval/gold_reward",
    "train/rewards/margins",
    "train/rewards/accuracies",
    "train/loss",
]


@dataclass
class Job:
    name: str  # the job dir's name: its overrides
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "finished"  # or failed, interrupted, running (module docstring)
    error: str | None = None  # set when the job failed
    detail: str = ""  # what stopped an interrupted job, where a running one runs
    config: dict[str, str] = field(default_factory=dict)  # method, knob from its config

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def method(self) -> str:
        return str(
            self.metrics.get("method")
            or self.config.get("method")
            or self.overrides.get("method", "?")
        )

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")


def _last_error(job_dir: Path) -> str:
    logs = sorted(job_dir.glob("*.log"))
    lines = [ln for p in logs for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no metrics.json and no log"])[-1].strip()[:200]


def _interruption(metrics: dict[str, Any]) -> str:
    """`SIGTERM during training at step 40` from an interrupted job's metrics."""
    phase, step = metrics.get("phase", "?"), metrics.get("step")
    text = f"{metrics.get('signal', 'signal')} during {phase}"
    if phase == "training":
        return f"{text} at step {step}"
    return f"{text}, " + ("no checkpoint yet" if step is None else f"checkpoint of step {step}")


def running_owner(marker: Path) -> tuple[bool, str]:
    """(alive, where) of the process a RUNNING marker names; another host's counts as alive
    (it cannot be checked from here)."""
    try:
        owner = json.loads(marker.read_text())
        pid, host = int(owner["pid"]), str(owner["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return False, ""
    if host != socket.gethostname():
        return True, f"pid {pid} on {host}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False, ""
    except PermissionError:  # alive, another user's
        pass
    return True, f"pid {pid}"


@functools.cache
def _kl_knobs() -> dict[str, str | None]:
    """Method name -> the key of its KL knob, from the method schemas (no torch imported)."""
    try:
        from rlhf_exp.config.schema import _method_specs

        return {name: spec.KL_KNOB for name, spec in _method_specs().items()}
    except Exception:  # a report from files alone: the overrides are the fallback
        log.debug("method schemas not importable; knobs from overrides only", exc_info=True)
        return {}


def _config_info(job_dir: Path) -> dict[str, str]:
    """{"method", "knob"} from the config the job ran with: the runner's resolved
    `config.yaml`, else Hydra's `.hydra/config.yaml` (written before the job started)."""
    for name in ("config.yaml", ".hydra/config.yaml"):
        try:
            config = yaml.safe_load((job_dir / name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        method = config.get("method") if isinstance(config, dict) else None
        if not isinstance(method, dict) or not method.get("name"):
            continue
        info = {"method": str(method["name"])}
        key = _kl_knobs().get(info["method"])
        value = method.get(key) if key else None
        if value is not None and not str(value).startswith("${"):
            info["knob"] = f"{key}={value}"
        return info
    return {}


def _read_metrics(path: Path) -> tuple[dict[str, Any], str | None]:
    """(metrics, None) from a job's `metrics.json`, or ({}, why) when it cannot be read as a
    JSON object (a truncated file, a disk error): the report lists that job as failed."""
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        return {}, str(err)
    if not isinstance(metrics, dict):
        return {}, f"a JSON {type(metrics).__name__}, not an object"
    return metrics, None


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir of the sweep (a dir with `.hydra/overrides.yaml`), finished or not."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        items = yaml.safe_load(overrides_file.read_text()) or []
        overrides = dict(item.lstrip("+~").split("=", 1) for item in items if "=" in item)
        job = Job(job_dir.name, job_dir, overrides)
        metrics_file, marker = job_dir / "metrics.json", job_dir / RUNNING_MARKER
        alive, where = running_owner(marker) if marker.is_file() else (False, "")
        if alive:  # a metrics.json there is an earlier attempt's
            job.status, job.detail = "running", where
        elif metrics_file.is_file():
            job.metrics, unreadable = _read_metrics(metrics_file)
            job.status = str(job.metrics.get("status", "finished"))
            if unreadable:  # cut short or edited by hand: no result to show
                job.status, job.error = "failed", f"unreadable metrics.json ({unreadable})"
            elif job.status == "failed":
                job.error = str(job.metrics.get("error", "failed"))
            elif job.status == "interrupted":
                job.detail = _interruption(job.metrics)
        elif marker.is_file():
            job.status, job.detail = "interrupted", "killed (no metrics.json)"
        else:
            job.status, job.error = "failed", _last_error(job_dir)
        if not job.finished or "knob" not in job.metrics:
            job.config = _config_info(job_dir)
        jobs.append(job)
    return jobs


def knob_of(job: Job) -> str:
    """The method's KL knob as `key=value` (from metrics.json, else from the job's config),
    else the `method.*` keys the job's overrides set ("-" when none)."""
    if "knob" in job.metrics:
        return str(job.metrics["knob"])
    if "knob" in job.config:
        return job.config["knob"]
    keys = sorted(k for k in job.overrides if k.startswith("method."))
    return ",".join(f"{k.removeprefix('method.')}={job.overrides[k]}" for k in keys) or "-"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def report_score(jobs: list[Job]) -> Score:
    """Gold reward when any job logged it, else the RM score: one choice for the whole sweep,
    so every run is compared on the same scale."""
    return GOLD if any(GOLD.key in j.metrics for j in jobs) else RM


def columns(jobs: list[Job], score: Score | None = None) -> list[tuple[str, str]]:
    """(metrics.json key, column title) of the tables; the score column comes first."""
    score = score or report_score(jobs)
    # With a gold score the RM score is one more column; without, it is the score itself.
    rm = [("eval/rm_reward", "RM score")] if score is GOLD else []
    cols = [(score.key, score.title), ("eval/kl", "KL"), *rm, ("eval/bleu", "BLEU")]
    cols.append((score.win_key, score.win_title))
    cols += [c for c in ACCURACY_COLUMNS if any(c[0] in j.metrics for j in jobs)]
    if any(LABELS_USED in j.metrics for j in jobs):  # the matched label budget, per method
        cols.append((LABELS_USED, "labels used"))
    cols += [("eval/length_mean", "length"), ("time/wall_s", "wall s")]
    return [*cols, ("memory/peak_rss_mb", "peak MB")]


def _score_cell(metrics: dict[str, Any], key: str) -> str:
    mean, lo, hi = (metrics.get(f"{key}{s}") for s in ("", "_ci_low", "_ci_high"))
    if mean is None:
        return ""
    return (
        f"{mean:.3f} [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else f"{mean:.3f}"
    )


def _has_ci(jobs: list[Job], score: Score) -> bool:
    # evaluation bootstraps the gold reward only; an RM score comes without an interval
    return any(f"{score.key}_ci_low" in j.metrics for j in jobs)


def shared_overrides(jobs: list[Job]) -> dict[str, str]:
    """The overrides every job of the sweep has (its data file, budget, steps), in the first
    job's order; none for a lone job, whose overrides are all it has to show."""
    if len(jobs) < 2:
        return {}
    rest = [set(job.overrides.items()) for job in jobs[1:]]
    return {k: v for k, v in jobs[0].overrides.items() if all((k, v) in r for r in rest)}


def run_label(job: Job, shared: dict[str, str]) -> str:
    """The overrides that tell `job` from the sweep's others (`method=dpo`). As unique as the
    dir names: two jobs whose other overrides agree would share every override, hence a dir."""
    own = [f"{k}={v}" for k, v in job.overrides.items() if shared.get(k) != v]
    return ",".join(own) or job.name


def markdown_table(jobs: list[Job], score: Score | None = None) -> str:
    """One row per job, then one aggregated row (mean ± std over seeds) per method + knob."""
    score = score or report_score(jobs)
    cols = columns(jobs, score)
    ci = " [95% CI]" if _has_ci(jobs, score) else ""
    shared = shared_overrides(jobs)
    head = ["run", "method", "knob", "seed", score.title + ci]
    head += [title for _, title in cols[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: (j.method, frontier.knob_order(knob_of(j)), j.seed)):
        knob = knob_of(job)
        if not job.finished:
            what = f"**{job.status}**" + (
                f": {job.error or job.detail}" if job.error or job.detail else ""
            )
            cells = [run_label(job, shared), job.method, knob, job.seed, what]
            cells += [""] * (len(head) - len(cells))
        else:
            groups[(job.method, knob)].append(job)
            cells = [
                run_label(job, shared),
                job.method,
                knob,
                job.seed,
                _score_cell(job.metrics, score.key),
            ]
            cells += [_fmt(job.metrics.get(key)) for key, _ in cols[1:]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")

    agg = ["| method | knob | seeds | " + " | ".join(t for _, t in cols) + " |"]
    agg.append("|" + "---|" * (3 + len(cols)))
    for (method, knob), members in sorted(
        groups.items(), key=lambda g: (g[0][0], frontier.knob_order(g[0][1]))
    ):
        cells = [method, knob, str(len(members))]
        for key, _ in cols:
            vals = [j.metrics[key] for j in members if isinstance(j.metrics.get(key), (int, float))]
            mean = f"{statistics.fmean(vals):.4g}" if vals else ""
            # one seed has no spread to show: "± 0" would claim one
            cells.append(f"{mean} ± {statistics.pstdev(vals):.2g}" if len(vals) > 1 else mean)
        agg.append("| " + " | ".join(cells) + " |")
    common = []
    if shared:  # said once, not in every row
        common = ["Every run: " + ", ".join(f"`{k}={v}`" for k, v in shared.items()) + ".", ""]
    return "\n".join(["## Runs", "", *common, *lines, "", "## Mean ± std over seeds", "", *agg])


def _series(jobs: list[Job]) -> dict[str, list[tuple[str, list[Job]]]]:
    by_method: dict[str, dict[str, list[Job]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        if job.finished:
            by_method[job.method][knob_of(job)].append(job)
    return {
        m: sorted(k.items(), key=lambda item: frontier.knob_order(item[0]))
        for m, k in by_method.items()
    }


def plot_frontier(jobs: list[Job], out: Path, score: Score | None = None) -> Path | None:
    """The sweep's score (`report_score`) against KL, one series per method: every seed's run
    as a faint point, each knob's mean over seeds with its 95% interval over seeds and prompts
    (`frontier.cells_of`) and the std of its KL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = score or report_score(jobs)
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    plotted = False
    for method, knobs in _series(jobs).items():
        cells = frontier.cells_of({(method, knob): members for knob, members in knobs}, score.key)
        if not cells:
            continue
        by_knob = dict(knobs)
        kl_std = [
            statistics.pstdev(
                [j.metrics["eval/kl"] for j in by_knob[c.knob] if "eval/kl" in j.metrics]
            )
            for c in cells
        ]
        cells_kl = sorted(zip(cells, kl_std, strict=True), key=lambda ck: ck[0].kl)
        xs = [c.kl for c, _ in cells_kl]
        ys = [c.score for c, _ in cells_kl]
        yerr = [[c.score - c.low for c, _ in cells_kl], [c.high - c.score for c, _ in cells_kl]]
        line = ax.errorbar(
            xs, ys, xerr=[e for _, e in cells_kl], yerr=yerr, marker="o", capsize=3, label=method
        )
        seeds = [j for _, members in knobs for j in members]
        ax.scatter(
            [
                j.metrics["eval/kl"]
                for j in seeds
                if "eval/kl" in j.metrics and score.key in j.metrics
            ],
            [
                j.metrics[score.key]
                for j in seeds
                if "eval/kl" in j.metrics and score.key in j.metrics
            ],
            s=12,
            alpha=0.35,
            color=line.lines[0].get_color(),
        )
        for c, _ in cells_kl:
            ax.annotate(
                c.knob, (c.kl, c.score), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(
        xlabel="KL(policy || reference), nats per completion",
        ylabel=score.axis,
        title="Reward vs KL frontier (points: seeds; bars: 95% CI over seeds x prompts)",
    )
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    path = out / "frontier.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


@functools.cache
def _event_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run, (step, value) in step order; of several values at one step
    the first (the end-of-run summary re-logs final metrics, e.g. the mean training loss, at
    the last step: not a point of the curve)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # its directory watcher logs "Directory watcher advancing ..." / "No path found after ..."
    # at INFO for every run it reads: ten lines of noise at the end of a sweep
    logging.getLogger("tensorboard").setLevel(logging.WARNING)
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        first: dict[int, float] = {}
        for event in acc.Scalars(tag):
            first.setdefault(event.step, event.value)
        out[tag] = sorted(first.items())
    return out


def _scalars(job: Job, tag: str) -> list[tuple[int, float]]:
    return _event_scalars(job.path / "tensorboard").get(tag, [])


# What each curve measures, for its y-axis.
CURVE_LABELS = {
    "objective/scores": "reward-model score per rollout",
    "objective/kl": "KL to reference (nats)",
    "eval/gold_reward": "gold reward (held-out mean)",
    "train/rewards/margins": "implicit reward margin",
    "train/rewards/accuracies": "implicit reward accuracy",
    "train/loss": "training loss",
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def seed_band(series: list[list[tuple[int, float]]]) -> tuple[list[int], list[float], list[float]]:
    """(steps, mean, std) over seeds at the steps every seed logged: one line per setting, not
    one per run, and no step that only some seeds reached."""
    common = sorted(set.intersection(*(set(dict(points)) for points in series)))
    values = [[dict(points)[step] for points in series] for step in common]
    means = [statistics.fmean(v) for v in values]
    stds = [statistics.pstdev(v) if len(v) > 1 else 0.0 for v in values]
    return common, means, stds


def _paper_style() -> dict[str, Any]:
    """Sizes for a figure printed one or two paper columns wide (fonts stay readable)."""
    return {
        "font.size": 8,
        "axes.titlesize": 8,
        "axes.labelsize": 8,
        "legend.fontsize": 7,
        "xtick.labelsize": 7,
        "ytick.labelsize": 7,
    }


def plot_curves(jobs: list[Job], out: Path) -> Path | None:
    """Training curves: a panel per method and `CURVE_TAGS` entry it logged, a line per knob
    setting (mean over seeds, band: +-1 std over seeds), labelled axes, a legend per panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    panels: list[tuple[str, str, list[tuple[str, list[list[tuple[int, float]]]]]]] = []
    for method, knobs in sorted(_series(jobs).items()):
        for tag in CURVE_TAGS:
            lines = []
            for knob, members in knobs:
                runs = [_scalars(j, tag) for j in members if (j.path / "tensorboard").is_dir()]
                runs = [r for r in runs if len(r) > 1]
                if runs:
                    lines.append((knob, runs))
            if lines:
                panels.append((method, tag, lines))
    if not panels:
        return None
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    with plt.rc_context(_paper_style()):
        fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 1.9 * rows), squeeze=False)
        for ax, (method, tag, lines) in zip(axes.flat, panels, strict=False):
            for knob, runs in lines:
                steps, mean, std = seed_band(runs)
                (line,) = ax.plot(steps, mean, linewidth=1.2, label=f"{knob} (n={len(runs)})")
                low = [m - d for m, d in zip(mean, std, strict=True)]
                high = [m + d for m, d in zip(mean, std, strict=True)]
                ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color(), linewidth=0)
            ax.set(title=method, xlabel="training step", ylabel=CURVE_LABELS.get(tag, tag))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
            ax.grid(alpha=0.3)
            ax.legend(frameon=False)
        for ax in list(axes.flat)[len(panels) :]:
            ax.set_visible(False)
        fig.suptitle("Training curves: mean over seeds, band +-1 std (n = seeds)")
        fig.tight_layout()
        path = out / "curves.png"
        fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_bars(jobs: list[Job], out: Path, score: Score | None = None) -> Path | None:
    """BLEU and the win rate by the sweep's score per method + knob: mean over seeds with
    +-1 std error bars, labelled axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = score or report_score(jobs)
    rows = []
    for method, knobs in _series(jobs).items():
        for knob, members in knobs:
            stats = []
            for key in ("eval/bleu", score.win_key):
                vals = [j.metrics[key] for j in members if _is_number(j.metrics.get(key))]
                stats.append(
                    (statistics.fmean(vals), statistics.pstdev(vals) if len(vals) > 1 else 0.0)
                    if vals
                    else (math.nan, 0.0)
                )
            rows.append((f"{method}\n{knob}", *stats))
    if not rows or all(math.isnan(b[0]) and math.isnan(w[0]) for _, b, w in rows):
        return None
    labels = [r[0] for r in rows]
    with plt.rc_context(_paper_style()):
        # stacked, sharing the settings' axis: one paper width however many settings
        fig, axes = plt.subplots(2, 1, sharex=True, figsize=(max(3.5, 0.33 * len(rows)), 4.6))
        for ax, i, ylabel in (
            (axes[0], 1, "BLEU vs preferred references"),
            (axes[1], 2, score.bars_title),
        ):
            means, stds = [r[i][0] for r in rows], [r[i][1] for r in rows]
            ax.bar(labels, means, yerr=stds, capsize=2, color="tab:blue", alpha=0.8)
            ax.set(ylabel=ylabel, title=f"{ylabel} (mean over seeds, +-1 std)")
            ax.tick_params(axis="x", labelsize=6, labelrotation=90)
            ax.grid(axis="y", alpha=0.3)
        axes[1].axhline(0.5, color="gray", linestyle="--", linewidth=1)
        axes[1].set_ylim(0, 1)
        fig.tight_layout()
        path = out / "bars.png"
        fig.savefig(path, dpi=200, bbox_inches="tight")
    plt.close(fig)
    return path


def _status_paragraphs(jobs: list[Job], sweep_dir: Path, interrupted: str | None) -> list[str]:
    """What a report of an unfinished sweep says first: interrupted (and how to continue),
    still running (a snapshot)."""
    stopped = [j for j in jobs if j.status == "interrupted"]
    parts = []
    if interrupted or stopped:
        how = next((j.metrics["resume"] for j in stopped if "resume" in j.metrics), None)
        how = f"`{how}`" if how else f"its command again with `hydra.sweep.dir={sweep_dir}`"
        parts += [
            f"**Sweep interrupted**{f' ({interrupted})' if interrupted else ''}: the jobs after "
            f"it did not start. Continue it with {how}: finished jobs are skipped, interrupted "
            "ones resume from their latest checkpoint.",
            "",
        ]
    running = sum(j.status == "running" for j in jobs)
    if running:
        parts += [f"{running} of the runs are still running: this report is a snapshot.", ""]
    return parts


def _labels_paragraph(jobs: list[Job]) -> list[str]:
    """The label budget the sweep's methods shared, and where its labels came from."""
    budgets = {j.metrics.get("data/labels/budget") for j in jobs if j.finished} - {None}
    if not budgets:
        return []
    policy = any(j.metrics.get("data/labels/policy_pairs") == 1.0 for j in jobs)
    agree = [
        j.metrics["data/labels/agreement_with_gold"]
        for j in jobs
        if "data/labels/agreement_with_gold" in j.metrics
    ]
    source = (
        "pairs sampled from the SFT policy and labelled by the gold reward"
        + (
            f" ({statistics.fmean(agree):.0%} of labels agree with the gold ranking)"
            if agree
            else ""
        )
        if policy
        else "the dataset's own pairs"
    )
    budget = ", ".join(f"{b:.0f}" for b in sorted(budgets))
    same = "every method the same budget" if len(budgets) == 1 else "budgets differ between runs"
    return [
        f"Label budget: {budget} preference labels, {source}; {same}. `labels used`: what each "
        "run learned from (directly for reward, DPO and KTO; through the reward model for "
        "PPO, RLOO, GRPO, online DPO and best-of-n; 0 with a gold or programmatic reward).",
        "",
    ]


def _frontier_section(jobs: list[Job], score: Score) -> list[str]:
    """Each method+knob's score with its interval over seeds and prompts, and the reading."""
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in jobs:
        if job.finished:
            groups[(job.method, knob_of(job))].append(job)
    cells = frontier.cells_of(groups, score.key)
    if not cells:
        return []
    parts = [
        "## Frontier: each setting over seeds and prompts",
        "",
        f"{score.title[0].upper()}{score.title[1:]} per method and knob: mean over seeds of "
        "the mean over held-out prompts, with a hierarchical bootstrap 95% interval (seeds "
        "resampled, then each seed's prompts), and mean KL. frontier.png plots the same.",
        "",
        frontier.cells_table(cells, score.title),
        "",
    ]
    text = frontier.reading(cells, "dpo", score.title)
    if text:
        parts += ["## Reading", "", text, ""]
    return parts


def build_report(sweep_dir: Path, interrupted: str | None = None) -> Path:
    """Write `comparison.md` (and the PNGs it links) into `sweep_dir`; returns its path.

    `interrupted`: the sweep was stopped by a signal (what stopped it), which the report says
    first, with how to continue; the report of the jobs so far is written as usual.
    """
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    if not jobs:
        raise FileNotFoundError(f"no Hydra job dirs (*/.hydra/overrides.yaml) under {sweep_dir}")
    score = report_score(jobs)
    plots = [
        p
        for p in (
            plot_frontier(jobs, sweep_dir, score),
            plot_curves(jobs, sweep_dir),
            plot_bars(jobs, sweep_dir, score),
        )
        if p is not None
    ]
    counts = f"{len(jobs)} run{'s' * (len(jobs) != 1)}, "
    counts += f"{sum(j.status == 'failed' for j in jobs)} failed"
    for status in ("interrupted", "running"):
        if any(j.status == status for j in jobs):
            counts += f", {sum(j.status == status for j in jobs)} {status}"
    interval = " with a bootstrap 95% interval" if _has_ci(jobs, score) else ""
    parts = [
        f"# Comparison: {sweep_dir.name}",
        "",
        *_status_paragraphs(jobs, sweep_dir, interrupted),
        f"{counts}. {score.title[0].upper()}{score.title[1:]}: mean "
        f"over held-out prompts{interval}; KL: sequence-level KL(policy || SFT) from sampled "
        "completions; BLEU: overlap with the preferred references (not a quality score).",
        "",
    ]
    if score is RM:
        parts += [
            "No run logged a gold reward (`eval/gold_reward`), so runs are compared by the RM "
            "score (`eval/rm_reward`): the learned reward model's score, which PPO optimises "
            "directly, not ground truth; win rates are by the RM score too.",
            "",
        ]
    parts += _labels_paragraph(jobs)
    parts += [markdown_table(jobs, score), ""]
    parts += _frontier_section(jobs, score)
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    if overoptimization.has_curves(jobs):  # best-of-n / PPO curves: their own report
        curves = overoptimization.build_report(sweep_dir, jobs)
        parts += ["", f"Reward over-optimisation curves and fits: [{curves.name}]({curves.name})"]
    report = sweep_dir / "comparison.md"
    atomic_write_text(report, "\n".join(parts) + "\n")
    return report


# What `rlhf-compare` takes, as its errors say it.
SWEEP_DIR = (
    "a sweep dir (outputs/multiruns/DATE/TIME, with Hydra's multirun.yaml and a dir per job)"
)


def _hydra_mode(job_dir: Path) -> str | None:
    """`hydra.mode` a job ran in (RUN, MULTIRUN) from its `.hydra/hydra.yaml`; None unknown."""
    try:
        config = yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())
        return str(config["hydra"]["mode"])
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None


def check_sweep_dir(path: Path) -> None:
    """Refuse (`UserError`, one line) what is not a sweep dir, before anything is written
    there: a path that does not exist, or a dir of single runs (`outputs/runs/DATE`), whose
    report would call them a sweep and tell how to continue one. A sweep dir holds
    `multirun.yaml` (Hydra's basic sweeper writes it as the sweep starts), or, from sweepers
    that write none (Optuna), job dirs whose `.hydra/hydra.yaml` says `mode: MULTIRUN`."""
    from rlhf_exp.config.model_files import kind
    from rlhf_exp.errors import UserError

    if not path.is_dir():
        raise UserError(f"{path} {kind(path)}; expected {SWEEP_DIR}")
    if (path / "multirun.yaml").is_file():
        return
    jobs = [p.parent.parent for p in sorted(path.glob("*/.hydra/overrides.yaml"))]
    if any(_hydra_mode(job) == "MULTIRUN" for job in jobs):
        return
    names = ", ".join(job.name for job in jobs[:2]) + (", ..." if len(jobs) > 2 else "")
    found = f"its runs ({names}) were not run with -m" if jobs else "no job dirs"
    raise UserError(f"{path} is not a sweep dir: no multirun.yaml, {found}; expected {SWEEP_DIR}")


def main(argv: list[str] | None = None) -> None:
    """`rlhf-compare SWEEP_DIR`: (re)build the report; bad input is one line, exit code 2."""
    from rlhf_exp.errors import UserError

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (outputs/multiruns/DATE/TIME)")
    args = parser.parse_args(argv)
    try:
        check_sweep_dir(args.sweep_dir)
        print(build_report(args.sweep_dir))
    except (UserError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")


class ComparisonReport(Callback):
    """Hydra callback: at the end of a multirun, write the report into the sweep dir."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Also ends the process with exit code 1 when a job failed: the sweep went on past it
        (the other jobs ran, the report lists it), but a script or CI must see it."""
        sweep_dir = Path(config.hydra.sweep.dir)
        report = build_report(sweep_dir)
        table = mean_table(report.read_text())
        print(f"\n{table}\n" if table else "", flush=True)
        log.info("comparison report: %s", report)
        jobs = load_jobs(sweep_dir)
        failed = [job for job in jobs if job.status == "failed"]
        if failed:
            lines = [f"{len(failed)} of {len(jobs)} jobs failed (see {report}):"]
            lines += [f"  {job.name}: {job.error}" for job in failed]
            print("\n".join(lines), file=sys.stderr, flush=True)
            sys.exit(1)


def mean_table(report_text: str) -> str:
    """The "Mean ± std over seeds" table of a comparison report (what a sweep's end prints to
    the terminal); "" when the report has none."""
    lines = report_text.splitlines()
    header = "## Mean ± std over seeds"
    if header not in lines:
        return ""
    start = lines.index(header) + 2  # the table starts after one blank line
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return "\n".join(["Mean ± std over seeds:", *lines[start:end]])


if __name__ == "__main__":
    main()
