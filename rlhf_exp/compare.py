"""The comparison report of a sweep: a markdown table and plots built from finished job dirs.

    python -m rlhf_exp.compare outputs/multiruns/2026-11-23/20-00-00

Reads files only (each job's `.hydra/overrides.yaml`, `metrics.json`, `run.log` and
TensorBoard events), never models, so it also rebuilds the report of a sweep that partly
failed: a job without a `metrics.json`, or whose metrics say `status: failed`, is listed as
failed with the last error line of its log. A run's knob is its method's KL knob (DPO's
`beta`, PPO's `kl_coef`), as recorded in its metrics.

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
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


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
    error: str | None = None  # set when the job failed

    @property
    def method(self) -> str:
        return str(self.metrics.get("method") or self.overrides.get("method", "?"))

    @property
    def seed(self) -> str:
        return self.overrides.get("seed", "0")


def _last_error(job_dir: Path) -> str:
    logs = sorted(job_dir.glob("*.log"))
    lines = [ln for p in logs for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no metrics.json and no log"])[-1].strip()[:200]


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job dir of the sweep (a dir with `.hydra/overrides.yaml`), finished or not."""
    jobs = []
    for overrides_file in sorted(Path(sweep_dir).glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        items = yaml.safe_load(overrides_file.read_text()) or []
        overrides = dict(item.lstrip("+~").split("=", 1) for item in items if "=" in item)
        job = Job(job_dir.name, job_dir, overrides)
        metrics_file = job_dir / "metrics.json"
        if metrics_file.is_file():
            job.metrics = json.loads(metrics_file.read_text())
            if job.metrics.get("status") == "failed":
                job.error = str(job.metrics.get("error", "failed"))
        else:
            job.error = _last_error(job_dir)
        jobs.append(job)
    return jobs


def knob_of(job: Job) -> str:
    """The method's KL knob as `key=value` (from metrics.json), else the `method.*` keys the
    job's overrides set ("-" when none)."""
    if "knob" in job.metrics:
        return str(job.metrics["knob"])
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


def markdown_table(jobs: list[Job], score: Score | None = None) -> str:
    """One row per job, then one aggregated row (mean ± std over seeds) per method + knob."""
    score = score or report_score(jobs)
    cols = columns(jobs, score)
    ci = " [95% CI]" if _has_ci(jobs, score) else ""
    head = ["run", "method", "knob", "seed", score.title + ci]
    head += [title for _, title in cols[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups: dict[tuple[str, str], list[Job]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: (j.method, knob_of(j), j.seed)):
        knob = knob_of(job)
        if job.error is not None:
            cells = [job.name, job.method, knob, job.seed, f"**failed**: {job.error}"]
            cells += [""] * (len(head) - len(cells))
        else:
            groups[(job.method, knob)].append(job)
            cells = [job.name, job.method, knob, job.seed, _score_cell(job.metrics, score.key)]
            cells += [_fmt(job.metrics.get(key)) for key, _ in cols[1:]]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")

    agg = ["| method | knob | seeds | " + " | ".join(t for _, t in cols) + " |"]
    agg.append("|" + "---|" * (3 + len(cols)))
    for (method, knob), members in sorted(groups.items()):
        cells = [method, knob, str(len(members))]
        for key, _ in cols:
            vals = [j.metrics[key] for j in members if isinstance(j.metrics.get(key), (int, float))]
            std = statistics.pstdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.fmean(vals):.4g} ± {std:.2g}" if vals else "")
        agg.append("| " + " | ".join(cells) + " |")
    return "\n".join(["## Runs", "", *lines, "", "## Mean ± std over seeds", "", *agg])


def _series(jobs: list[Job]) -> dict[str, list[tuple[str, list[Job]]]]:
    by_method: dict[str, dict[str, list[Job]]] = defaultdict(lambda: defaultdict(list))
    for job in jobs:
        if job.error is None:
            by_method[job.method][knob_of(job)].append(job)
    return {m: sorted(k.items()) for m, k in by_method.items()}


def plot_frontier(jobs: list[Job], out: Path, score: Score | None = None) -> Path | None:
    """The sweep's score (`report_score`) against KL, one series per method, a point per knob
    with std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = score or report_score(jobs)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    plotted = False
    for method, knobs in _series(jobs).items():
        points = []
        for knob, members in knobs:
            kl = [j.metrics["eval/kl"] for j in members if "eval/kl" in j.metrics]
            ys = [j.metrics[score.key] for j in members if score.key in j.metrics]
            if kl and ys:
                points.append(
                    (
                        statistics.fmean(kl),
                        statistics.fmean(ys),
                        statistics.pstdev(kl),
                        statistics.pstdev(ys),
                        knob,
                    )
                )
        if not points:
            continue
        points.sort()
        xs, ys, xerr, yerr, labels = zip(*points, strict=True)
        ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, marker="o", capsize=3, label=method)
        for x, y, label in zip(xs, ys, labels, strict=True):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        plotted = True
    if not plotted:
        plt.close(fig)
        return None
    ax.set(
        xlabel="KL(policy || reference), nats per completion",
        ylabel=score.axis,
        title="Reward vs KL frontier",
    )
    ax.grid(alpha=0.3)
    ax.legend()
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


def plot_curves(jobs: list[Job], out: Path) -> Path | None:
    """Training curves: one row per method, one panel per `CURVE_TAGS` entry the method
    logged, one line per finished job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [j for j in jobs if j.error is None and (j.path / "tensorboard").is_dir()]
    rows: dict[str, dict[str, list[tuple[Job, list]]]] = {}
    for job in done:
        for tag in CURVE_TAGS:
            points = _scalars(job, tag)
            if len(points) > 1:
                rows.setdefault(job.method, {}).setdefault(tag, []).append((job, points))
    if not rows:
        return None
    width = max(len(tags) for tags in rows.values())
    fig, axes = plt.subplots(
        len(rows), width, figsize=(4.5 * width, 3.5 * len(rows)), squeeze=False
    )
    for axes_row, (method, tags) in zip(axes, sorted(rows.items()), strict=True):
        for ax, (tag, series) in zip(axes_row, tags.items(), strict=False):
            for job, points in series:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=job.name, linewidth=1)
            ax.set(title=f"{method}: {tag}", xlabel="step")
            ax.grid(alpha=0.3)
        axes_row[len(tags) - 1].legend(fontsize=6)
        for ax in axes_row[len(tags) :]:
            ax.set_visible(False)
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_bars(jobs: list[Job], out: Path, score: Score | None = None) -> Path | None:
    """BLEU and the win rate by the sweep's score per method + knob (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = score or report_score(jobs)
    rows = []
    for method, knobs in _series(jobs).items():
        for knob, members in knobs:
            means = [
                statistics.fmean([j.metrics.get(k, math.nan) for j in members])
                for k in ("eval/bleu", score.win_key)
            ]
            rows.append((f"{method}\n{knob}", *means))
    if not rows or all(math.isnan(b) and math.isnan(w) for _, b, w in rows):
        return None
    labels, bleus, wins = zip(*rows, strict=True)
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.2 * len(rows) * 2), 3.5))
    axes[0].bar(labels, bleus)
    axes[0].set(title="BLEU vs preferred references")
    axes[1].bar(labels, wins)
    axes[1].axhline(0.5, color="gray", linestyle="--", linewidth=1)
    axes[1].set(title=score.bars_title, ylim=(0, 1))
    for ax in axes:
        ax.tick_params(axis="x", labelsize=7)
    path = out / "bars.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def build_report(sweep_dir: Path) -> Path:
    """Write `comparison.md` (and the PNGs it links) into `sweep_dir`; returns its path."""
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
    failed = sum(j.error is not None for j in jobs)
    interval = " with a bootstrap 95% interval" if _has_ci(jobs, score) else ""
    parts = [
        f"# Comparison: {sweep_dir.name}",
        "",
        f"{len(jobs)} runs, {failed} failed. {score.title[0].upper()}{score.title[1:]}: mean "
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
    parts += [markdown_table(jobs, score), ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    report = sweep_dir / "comparison.md"
    report.write_text("\n".join(parts) + "\n")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir (outputs/multiruns/DATE/TIME)")
    args = parser.parse_args(argv)
    try:
        print(build_report(args.sweep_dir))
    except FileNotFoundError as err:
        parser.exit(2, f"error: {err}\n")


class ComparisonReport(Callback):
    """Hydra callback: at the end of a multirun, write the report into the sweep dir."""

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        report = build_report(Path(config.hydra.sweep.dir))
        log.info("comparison report: %s", report)


if __name__ == "__main__":
    main()
