"""Reward over-optimisation: the fits recover known coefficients within their errors, the report
and plot are rebuilt from metrics.json files alone, and the quick preset is a real sweep that
ends with them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlhf_exp import compare
from rlhf_exp.overoptimization import (
    REPORT,
    bon_form,
    fit_gain,
    fit_grid,
    rl_form,
)
from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("form", "f", "alpha", "beta"), [("bon", bon_form, 0.6, 0.2), ("rl", rl_form, 0.5, 0.3)]
)
def test_fit_recovers_known_coefficients_within_their_error(form, f, alpha, beta):
    d = np.linspace(0.1, 3.0, 16)
    rng = np.random.default_rng(0)
    inside = 0
    for _ in range(40):
        fit = fit_gain(form, d, f(d, alpha, beta) + rng.normal(0, 0.02, d.shape))
        assert fit.points == len(d) and fit.alpha_se > 0 and fit.beta_se > 0
        # every fit within 4 standard errors, and about 95% of them within 2
        assert abs(fit.alpha - alpha) < 4 * fit.alpha_se and abs(fit.beta - beta) < 4 * fit.beta_se
        inside += abs(fit.alpha - alpha) < 2 * fit.alpha_se
        inside += abs(fit.beta - beta) < 2 * fit.beta_se
    assert inside >= 0.85 * 80
    # noise-free: exact, and the peak where the derivative of the form vanishes
    exact = fit_gain(form, d, f(d, alpha, beta))
    assert exact.alpha == pytest.approx(alpha, abs=1e-6) and exact.beta == pytest.approx(beta)
    peak = alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    assert exact.peak_d == pytest.approx(peak, rel=1e-5)


def test_fit_leaves_out_the_start_and_needs_three_points():
    assert rl_form(np.array([0.0]), 1.0, 1.0)[0] == 0.0  # d log d -> 0
    with pytest.raises(ValueError, match="needs 3"):
        fit_gain("bon", [0.0, 0.5, 1.0], [0.0, 0.1, 0.2])
    assert fit_grid(256)[:8] == [1, 2, 3, 4, 6, 8, 11, 16] and fit_grid(256)[-1] == 256


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")  # as Hydra's sweeper
    (job / "metrics.json").write_text(json.dumps(metrics))


def _curve_sweep(sweep: Path) -> None:
    """Two reward models, each with a best-of-n and a PPO job whose curves follow the forms:
    the weak RM's gold turns down while its proxy keeps rising."""
    rng = np.random.default_rng(1)
    ns = np.arange(1, 65)
    bon_kl = np.log(ns) - (ns - 1) / ns
    steps = np.arange(0, 44, 4)
    ppo_kl = np.linspace(0, 16, len(steps))
    for labels, (a_bon, b_bon, a_rl, b_rl), acc in (
        (100, (0.5, 0.4, 0.3, 0.25), 0.62),
        (1000, (0.6, 0.1, 0.4, 0.05), 0.81),
    ):
        common = {
            "upstream/reward/entry": f"rm{labels}",
            "upstream/reward/train/pairs": labels,
            "upstream/reward/eval/accuracy": acc,
        }
        bon_gold = 0.1 + bon_form(np.sqrt(bon_kl), a_bon, b_bon) + rng.normal(0, 0.005, 64)
        bon_gold[0] = 0.1
        _job(
            sweep,
            f"arm=bon_curve_64,dataset.n_labels={labels}",
            ["arm=bon_curve_64", f"dataset.n_labels={labels}"],
            {
                "method": "best_of_n",
                "knob": "n=64",
                "eval/gold_reward": float(bon_gold[-1]),
                "eval/kl": float(bon_kl[-1]),
                "curve/n": ns.tolist(),
                "curve/kl": bon_kl.tolist(),
                "curve/gold": bon_gold.tolist(),
                "curve/gold_se": [0.01] * 64,
                "curve/proxy": np.log1p(ns).tolist(),  # always rising
                **common,
            },
        )
        rl_gold = 0.1 + rl_form(np.sqrt(ppo_kl), a_rl, b_rl) + rng.normal(0, 0.005, len(steps))
        rl_gold[0] = 0.1
        _job(
            sweep,
            f"arm=ppo_kl_0.01,dataset.n_labels={labels}",
            ["arm=ppo_kl_0.01", f"dataset.n_labels={labels}"],
            {
                "method": "ppo",
                "knob": "kl_coef=0.01",
                "eval/gold_reward": float(rl_gold[-1]),
                "eval/kl": float(ppo_kl[-1]),
                "curve/step": steps.tolist(),
                "curve/kl": ppo_kl.tolist(),
                "curve/gold": rl_gold.tolist(),
                "curve/proxy": (0.5 * steps).tolist(),
                **common,
            },
        )


def test_compare_rebuilds_the_report_and_plot_from_files(tmp_path: Path):
    _curve_sweep(tmp_path)
    compare.main([str(tmp_path)])
    text = (tmp_path / REPORT).read_text()
    assert (tmp_path / "overoptimization.png").stat().st_size > 10_000
    assert f"]({REPORT})" in (tmp_path / "comparison.md").read_text()
    fits = text.split("## Fits")[1].split("##")[0]
    rows = {
        tuple(c.strip() for c in line.split("|")[1:3]): line
        for line in fits.splitlines()
        if line.startswith("| 1")
    }
    # each RM: its accuracy, then a fit per method whose alpha lies near the true one
    assert "| 100 labels | 100 | 0.620 |" in text and "| 1000 labels | 1000 | 0.810 |" in text
    for (labels, method), alpha in {
        ("100 labels", "best-of-n"): 0.5,
        ("1000 labels", "best-of-n"): 0.6,
        ("100 labels", "PPO"): 0.3,
        ("1000 labels", "PPO"): 0.4,
    }.items():
        cells = [c.strip() for c in rows[(labels, method)].split("|")[1:-1]]
        fitted = next(c for c in cells if "±" in c)
        value, se = (float(x) for x in fitted.split("±"))
        assert abs(value - alpha) < max(4 * se, 0.02), (labels, method, fitted)
    # the weak RM's best-of-n gold peaks inside the curve (d* = 0.625) while its proxy rises
    peaks = [ln for ln in text.splitlines() if ln.startswith("| 100 labels | best-of-n |")]
    assert peaks[-1].endswith("**yes** |")
    strong = [ln for ln in text.splitlines() if ln.startswith("| 1000 labels | best-of-n |")]
    assert strong[-1].endswith("| no |")  # its peak d* = 3 lies beyond n = 64


@pytest.mark.slow
def test_quick_preset_sweep_writes_the_report_and_plot(tmp_path: Path, shared_cache: Path):
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "experiment=overoptimization_quick",
        f"paths.root_dir={tmp_path}",
        f"paths.cache_dir={shared_cache}",  # debug=fast's SFT policy, as the other tests'
        f"hydra.sweep.dir={sweep}",
        # smaller still for CI: one label budget, 3 PPO steps, 5 reward-model steps
        "dataset.n_labels=64",
        "method.max_steps=3",
        "upstream.reward.overrides.max_steps=5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = (sweep / REPORT).read_text()
    assert (sweep / "overoptimization.png").is_file()
    assert "| 64 labels | best-of-n |" in text and "| 64 labels | PPO |" in text
    jobs = sorted(sweep.glob("arm=*"))
    assert len(jobs) == 2 and "overoptimization.md" in (sweep / "comparison.md").read_text()
    for job in jobs:
        metrics = json.loads((job / "metrics.json").read_text())
        assert 0 <= metrics["upstream/reward/eval/accuracy"] <= 1
        n = len(metrics["curve/kl"])
        assert len(metrics["curve/gold"]) == len(metrics["curve/proxy"]) == n
        if "curve/n" in metrics:  # best-of-n up to 32: KL analytic
            assert metrics["curve/n"] == list(range(1, 33))
        else:  # PPO: step 0 and each of its 3 steps, KL measured (0 at the start)
            assert metrics["curve/step"] == [0, 1, 2, 3]
            assert metrics["curve/kl"][0] == pytest.approx(0.0, abs=1e-4)
