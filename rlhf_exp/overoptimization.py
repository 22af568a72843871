"""Reward over-optimisation (Gao, Schulman, Hilton 2022) from a sweep's files: fits, report, plot.

    python run.py -m experiment=overoptimization_quick    # writes the report at the end
    python -m rlhf_exp.overoptimization SWEEP_DIR          # rebuilds it (so does rlhf-compare)

A sweep of `experiment=overoptimization` holds, for each reward model (one per label budget),
a best-of-n job (`method.curve_max_n`: gold and proxy score for n = 1..N, KL analytic) and a
PPO job (gold, proxy and KL at every periodic evaluation), each with its curve in
`metrics.json` (`curve/*`). Against d = sqrt(KL) this module fits the paper's forms to the gold
score's gain over the SFT policy (d = 0):

    best-of-n   gold(d) - gold(0) = d (alpha - beta d)        peak at d* = alpha / (2 beta)
    RL          gold(d) - gold(0) = d (alpha - beta log d)    peak at d* = exp(alpha/beta - 1)

(least squares, `scipy.optimize.curve_fit`; standard errors from its covariance, scaled by
the residuals), marks where the gold score peaks while the proxy keeps rising, and writes
`overoptimization.md` and `overoptimization.png` (one panel per reward model: gold and proxy
of both methods against d, the fits dashed) into the sweep dir. Files only: no torch.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf_exp.artifacts import atomic_write_text

log = logging.getLogger(__name__)

REPORT = "overoptimization.md"
PLOT = "overoptimization.png"
METHODS = {"bon": "best-of-n", "rl": "PPO"}


def bon_form(d: Any, alpha: float, beta: float) -> Any:
    """Best-of-n's gold gain at d = sqrt(KL): d (alpha - beta d)."""
    return d * (alpha - beta * d)


def rl_form(d: Any, alpha: float, beta: float) -> Any:
    """RL's gold gain at d = sqrt(KL): d (alpha - beta log d), 0 at d = 0."""
    import numpy as np

    d = np.asarray(d, dtype=float)
    safe = np.where(d > 0, d, 1.0)
    return np.where(d > 0, d * (alpha - beta * np.log(safe)), 0.0)


FORMS: dict[str, Callable[..., Any]] = {"bon": bon_form, "rl": rl_form}


@dataclass
class Fit:
    form: str  # "bon" or "rl"
    alpha: float
    beta: float
    alpha_se: float
    beta_se: float
    points: int
    rmse: float

    @property
    def peak_d(self) -> float:
        """d = sqrt(KL) where the fitted gold gain is highest (inf: it never turns down)."""
        if self.beta <= 0:
            return math.inf
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        return math.exp(min(self.alpha / self.beta - 1, 700.0))

    def __call__(self, d: Any) -> Any:
        return FORMS[self.form](d, self.alpha, self.beta)


def fit_gain(form: str, d: Any, gain: Any, sigma: Any | None = None) -> Fit:
    """Least-squares fit of `FORMS[form]` to gold gains at d = sqrt(KL); points at d = 0 (the
    start, where both forms are 0 by construction) are left out. `sigma`: per-point standard
    errors, used as relative weights. Needs three points beyond d = 0 for an error estimate."""
    import numpy as np
    from scipy.optimize import curve_fit

    d, gain = np.asarray(d, dtype=float), np.asarray(gain, dtype=float)
    keep = (d > 0) & np.isfinite(gain)
    if sigma is not None:
        sigma = np.asarray(sigma, dtype=float)[keep]
        sigma = None if not np.all(sigma > 0) else sigma
    d, gain = d[keep], gain[keep]
    if len(d) < 3:
        raise ValueError(f"{len(d)} points beyond d=0: a fit of two coefficients needs 3")
    params, cov = curve_fit(FORMS[form], d, gain, p0=(1.0, 0.1), sigma=sigma, maxfev=10000)
    se = np.sqrt(np.diag(cov))
    rmse = float(np.sqrt(np.mean((FORMS[form](d, *params) - gain) ** 2)))
    return Fit(form, float(params[0]), float(params[1]), float(se[0]), float(se[1]), len(d), rmse)


def fit_grid(n_max: int) -> list[int]:
    """The n of best-of-n that its fit uses: about evenly spaced in log n (1, 2, 3, 4, 6, 8, 11,
    16, ...), since the curve's points crowd together at large n (d grows like sqrt(log n))."""
    grid, k = [], 0.0
    while round(2**k) <= n_max:
        if round(2**k) not in grid:
            grid.append(round(2**k))
        k += 0.5
    return grid


@dataclass
class Curve:
    """One job's curve: gold and proxy against d = sqrt(KL), and where each point is."""

    kind: str  # "bon" or "rl"
    job: str
    rm: str  # which reward model (its cache entry, else the job's overrides)
    d: list[float]
    gold: list[float]
    proxy: list[float] | None
    at: list[int]  # n of best-of-n, step of PPO
    gold_se: list[float] | None = None
    fit: Fit | None = None
    fit_error: str = ""

    @property
    def where(self) -> str:
        return "n" if self.kind == "bon" else "step"

    def peak(self) -> dict[str, Any]:
        """Where the observed gold peaks, and whether from there to the end the gold falls by
        more than twice the standard error of the difference (when the curve has errors)
        while the proxy rises: `over`, over-optimisation seen beyond noise."""
        top = max(range(len(self.gold)), key=self.gold.__getitem__)
        out = {"i": top, "d": self.d[top], "at": self.at[top], "gold": self.gold[top]}
        se = self.gold_se or [0.0] * len(self.gold)
        noise = 2 * math.hypot(se[top], se[-1])
        falls = self.gold[top] - self.gold[-1] > noise
        out["over"] = falls and bool(self.proxy and self.proxy[-1] > self.proxy[top])
        return out


def curves_of(job: Any) -> Curve | None:
    """The curve in a finished job's metrics (`compare.Job`), or None when it has none."""
    m = job.metrics
    if not job.finished or "curve/gold" not in m or "curve/kl" not in m:
        return None
    kind = "bon" if "curve/n" in m else "rl"
    d = [math.sqrt(max(float(kl), 0.0)) for kl in m["curve/kl"]]
    gold = [float(g) for g in m["curve/gold"]]
    at = list(m["curve/n"] if kind == "bon" else m.get("curve/step", range(len(d))))
    proxy = m.get("curve/proxy")
    rm = str(m.get("upstream/reward/entry") or _rm_from_overrides(job.overrides))
    curve = Curve(kind, job.name, rm, d, gold, proxy, at, m.get("curve/gold_se"))
    # fit the gain over the start (d = 0: n = 1, or PPO's step 0)
    if kind == "bon":
        rows = [at.index(n) for n in fit_grid(max(at)) if n in at]
    else:
        rows = list(range(len(d)))
    start = gold[0]
    try:
        curve.fit = fit_gain(
            kind,
            [d[i] for i in rows],
            [gold[i] - start for i in rows],
            [curve.gold_se[i] for i in rows] if curve.gold_se else None,
        )
    except (ValueError, RuntimeError) as err:  # too few points, or no convergence
        curve.fit_error = str(err)
    return curve


def _rm_from_overrides(overrides: dict[str, str]) -> str:
    keys = sorted(k for k in overrides if k.startswith("dataset.") or k.startswith("upstream."))
    return ",".join(f"{k}={overrides[k]}" for k in keys) or "reward model"


@dataclass
class RewardModel:
    key: str
    label: str  # e.g. "1000 labels"
    pairs: int | None  # preference pairs it trained on
    accuracy: float | None  # held-out pair accuracy
    baseline: float | None  # lexical baseline's accuracy on the same pairs
    curves: list[Curve]


def reward_models(jobs: list[Any]) -> list[RewardModel]:
    """The sweep's reward models, each with the curves of the jobs that used it, ordered by
    training pairs."""
    by_key: dict[str, RewardModel] = {}
    for job in jobs:
        curve = curves_of(job)
        if curve is None:
            continue
        m = job.metrics
        if curve.rm not in by_key:
            pairs = m.get("upstream/reward/train/pairs")
            labels = job.overrides.get("dataset.n_labels")
            label = f"{labels} labels" if labels else f"{pairs} pairs" if pairs else curve.rm
            by_key[curve.rm] = RewardModel(
                curve.rm,
                label,
                int(pairs) if pairs is not None else None,
                m.get("upstream/reward/eval/accuracy"),
                m.get("upstream/reward/eval/accuracy_lexical_baseline"),
                [],
            )
        by_key[curve.rm].curves.append(curve)
    return sorted(by_key.values(), key=lambda r: (r.pairs is None, r.pairs or 0, r.label))


def _num(value: float | None, fmt: str = ".3f") -> str:
    return "" if value is None else "inf" if math.isinf(value) else format(value, fmt)


def plot(models: list[RewardModel], out: Path) -> Path | None:
    """Gold (solid, left axis) and proxy (dotted, right axis) against sqrt(KL), one panel per
    reward model; the fitted gold curves dashed; a star where the observed gold peaks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not models:
        return None
    fig, axes = plt.subplots(1, len(models), figsize=(4.8 * len(models), 4), squeeze=False)
    colours = {"bon": "tab:blue", "rl": "tab:orange"}
    for ax, model in zip(axes[0], models, strict=True):
        proxy_ax = ax.twinx()
        for c in sorted(model.curves, key=lambda c: c.kind):
            colour, name = colours[c.kind], METHODS[c.kind]
            marker = "o" if c.kind == "rl" else None  # PPO: one point per evaluation
            ax.plot(c.d, c.gold, color=colour, marker=marker, ms=3, lw=1.5, label=f"{name} gold")
            if c.fit is not None:
                grid = np.linspace(0, max(c.d), 100)
                ax.plot(grid, c.gold[0] + c.fit(grid), "--", color=colour, linewidth=1)
            peak = c.peak()
            ax.plot([peak["d"]], [peak["gold"]], "*", color=colour, markersize=11)
            if c.proxy:
                proxy_ax.plot(c.d, c.proxy, ":", color=colour, linewidth=1.5, label=f"{name} proxy")
        accuracy = f", RM acc. {model.accuracy:.2f}" if model.accuracy is not None else ""
        ax.set(title=f"{model.label}{accuracy}", xlabel="sqrt(KL), sqrt(nats)")
        ax.set_ylabel("gold score (solid; fit dashed)")
        proxy_ax.set_ylabel("proxy: RM score (dotted)")
        ax.grid(alpha=0.3)
        lines = ax.get_legend_handles_labels()
        more = proxy_ax.get_legend_handles_labels()
        ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc="lower right")
    fig.suptitle("Gold and proxy score against sqrt(KL) per reward model (star: gold peak)")
    fig.tight_layout()
    path = out / PLOT
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def markdown(models: list[RewardModel], sweep_dir: Path) -> str:
    fits = [
        "| reward model | method | alpha ± se | beta ± se | fitted peak d* (KL) | points | RMSE |",
        "|---|---|---|---|---|---|---|",
    ]
    peaks = [
        "| reward model | method | gold at start | gold peak (at) | gold at end | "
        "proxy at peak -> end | gold falls (> 2 se) while proxy rises |",
        "|---|---|---|---|---|---|---|",
    ]
    rms = [
        "| reward model | training pairs | held-out accuracy | lexical baseline | runs |",
        "|---|---|---|---|---|",
    ]
    for model in models:
        runs = ", ".join(sorted(c.job for c in model.curves))
        rms.append(
            f"| {model.label} | {model.pairs or ''} | {_num(model.accuracy)} | "
            f"{_num(model.baseline)} | {runs} |"
        )
        for c in sorted(model.curves, key=lambda c: c.kind):
            name = METHODS[c.kind]
            if c.fit is not None:
                f = c.fit
                peak = f"{f.peak_d:.2f} ({f.peak_d**2:.2f})"
                if f.peak_d > max(c.d):  # the fit turns down only past the last point
                    peak = f"beyond the data (> {max(c.d):.2f})"
                fits.append(
                    f"| {model.label} | {name} | {f.alpha:.3f} ± {f.alpha_se:.3f} | "
                    f"{f.beta:.3f} ± {f.beta_se:.3f} | {peak} | {f.points} | {f.rmse:.3f} |"
                )
            else:
                fits.append(f"| {model.label} | {name} | no fit: {c.fit_error} | | | | |")
            p = c.peak()
            proxy = f"{c.proxy[p['i']]:.2f} -> {c.proxy[-1]:.2f}" if c.proxy else ""
            peaks.append(
                f"| {model.label} | {name} | {c.gold[0]:.3f} | {p['gold']:.3f} "
                f"({c.where}={p['at']}, d={p['d']:.2f}) | {c.gold[-1]:.3f} "
                f"({c.where}={c.at[-1]}, d={c.d[-1]:.2f}) | {proxy} | "
                f"{'**yes**' if p['over'] else 'no'} |"
            )
    return "\n".join(
        [
            f"# Reward over-optimisation: {sweep_dir.name}",
            "",
            "After Gao, Schulman, Hilton (2022): reward models trained on different numbers of "
            "preference labels (the proxy), and best-of-n and PPO against each, scored by the "
            "gold reward. d = sqrt(KL(policy || SFT)) in sqrt(nats): best-of-n's analytic "
            "log n - (n-1)/n, PPO's measured k1 estimate at each periodic evaluation. Fits to "
            "the gold gain over the SFT policy: best-of-n d (alpha - beta d), PPO "
            "d (alpha - beta log d); the standard errors are the fit's (its covariance scaled "
            "by the residuals) and take the points as independent, which best-of-n's, read "
            "off one set of samples, are not. Best-of-n is fitted on n about evenly spaced in "
            "log n.",
            "",
            "## Reward models",
            "",
            *rms,
            "",
            "## Fits",
            "",
            *fits,
            "",
            "## Where the gold score peaks",
            "",
            *peaks,
            "",
            f"![over-optimisation]({PLOT})",
            "",
        ]
    )


def has_curves(jobs: list[Any]) -> bool:
    return any(job.finished and "curve/gold" in job.metrics for job in jobs)


def build_report(sweep_dir: Path, jobs: list[Any] | None = None) -> Path | None:
    """Write `overoptimization.md` and its plot into `sweep_dir` from the jobs' metrics.json;
    None when no finished job holds a curve."""
    from rlhf_exp.compare import load_jobs

    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir) if jobs is None else jobs
    models = reward_models(jobs)
    if not models:
        return None
    plot(models, sweep_dir)
    report = sweep_dir / REPORT
    atomic_write_text(report, markdown(models, sweep_dir))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun dir of curve jobs")
    args = parser.parse_args(argv)
    report = build_report(args.sweep_dir)
    if report is None:
        parser.exit(2, f"error: no finished job with curve/* metrics under {args.sweep_dir}\n")
    print(report)


if __name__ == "__main__":
    main()
