"""The comparison report from hand-made job dirs: rows, aggregates, failures, plots."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import matplotlib.figure
import pytest
from torch.utils.tensorboard import SummaryWriter

from rlhf_exp.compare import build_report, load_jobs, mean_table


def make_job(sweep: Path, overrides: list[str], metrics: dict | None, log: str = "") -> Path:
    job = sweep / ",".join(overrides)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")  # as Hydra's sweeper
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
        writer = SummaryWriter(str(job / "tensorboard"))
        for step in range(3):
            writer.add_scalar("objective/kl", metrics.get("eval/kl", 1.0) * step, step)
        writer.close()
    (job / "run.log").write_text(log)
    return job


def metrics(method: str, kl: float, gold: float) -> dict:
    return {
        "method": method,
        "eval/kl": kl,
        "eval/gold_reward": gold,
        "eval/gold_reward_ci_low": gold - 0.05,
        "eval/gold_reward_ci_high": gold + 0.05,
        "eval/bleu": 0.1,
        "eval/win_rate_gold": 0.6,
        "time/wall_s": 12.0,
    }


def rm_metrics(method: str, kl: float, rm: float) -> dict:
    """What a run on preference data without a gold scorer logs: the RM score, no gold."""
    return {
        "method": method,
        "eval/kl": kl,
        "eval/rm_reward": rm,
        "eval/bleu": 0.1,
        "eval/win_rate_rm": 0.7,
        "time/wall_s": 12.0,
    }


@pytest.fixture
def figure_labels(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """File name -> the y-labels and titles of each saved figure's axes."""
    saved: dict[str, list[str]] = {}
    save = matplotlib.figure.Figure.savefig

    def record(fig, path, *args, **kwargs):
        saved[Path(path).name] = [t for ax in fig.axes for t in (ax.get_ylabel(), ax.get_title())]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return saved


def test_report_lists_every_run_aggregates_seeds_and_marks_failures(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for seed, gold in ((0, 0.30), (1, 0.40)):
        make_job(
            sweep, ["method=dpo", "method.beta=0.1", f"seed={seed}"], metrics("dpo", 2.0, gold)
        )
    make_job(sweep, ["method=dpo", "method.beta=0.5", "seed=0"], metrics("dpo", 1.0, 0.2))
    make_job(sweep, ["method=ppo", "method.kl_coef=0.05", "seed=0"], metrics("ppo", 3.0, 0.5))
    make_job(
        sweep,
        ["method=ppo", "method.kl_coef=0.05", "seed=1"],
        None,
        log="[INFO] - step 3\nerror: method.kl_coef=nan is invalid: must be >= 0\n",
    )

    jobs = load_jobs(sweep)
    assert len(jobs) == 5 and sum(j.error is not None for j in jobs) == 1
    report = build_report(sweep).read_text()
    assert "5 runs, 1 failed" in report
    assert "**failed**: error: method.kl_coef=nan is invalid" in report
    assert "0.300 [0.250, 0.350]" in report  # per-run gold with its interval
    # aggregated over the two seeds of beta=0.1: mean 0.35, std 0.05
    assert "| dpo | beta=0.1 | 2 | 0.35 ± 0.05 |" in report
    assert "| ppo | kl_coef=0.05 | 1 |" in report
    for png in ("frontier.png", "curves.png", "bars.png"):
        assert (sweep / png).stat().st_size > 1000 and f"({png})" in report
    # what the end of a sweep prints: the mean table alone, header to last row
    printed = mean_table(report).splitlines()
    assert printed[0] == "Mean ± std over seeds:" and printed[1].startswith("| method | knob |")
    assert printed[-1].startswith("| ppo | kl_coef=0.05 | 1 |") and len(printed) == 6  # 3 settings
    assert mean_table("# no table here\n") == ""


def test_runs_are_named_by_what_tells_them_apart(tmp_path: Path):
    """A sweep on a user's file: every job dir carries the file and the budget; the table
    names each run by its own overrides and lists the shared ones once."""
    sweep = tmp_path / "sweep"
    shared = ["dataset=files", "+dataset.data_files.preference=hh.jsonl"]
    for method, kl in (("dpo", 1.0), ("ppo", 2.0)):
        make_job(
            sweep, [*shared, "method.max_steps=4", f"method={method}"], metrics(method, kl, 0.3)
        )
    report = build_report(sweep).read_text()
    assert "Every run: `dataset=files`, `dataset.data_files.preference=hh.jsonl`, " in report
    rows = [line for line in report.splitlines() if line.startswith("| method=")]
    assert [row.split(" | ")[0] for row in rows] == ["| method=dpo", "| method=ppo"]
    # a lone run keeps its whole name; runs differing in two keys show both
    make_job(sweep, [*shared, "method.max_steps=8", "method=dpo"], metrics("dpo", 1.5, 0.4))
    report = build_report(sweep).read_text()
    assert "| method.max_steps=8,method=dpo | dpo |" in report
    assert "| method.max_steps=4,method=ppo | ppo |" in report
    lone = tmp_path / "lone"
    make_job(lone, ["method=dpo", "seed=3"], metrics("dpo", 1.0, 0.3))
    assert "| method=dpo,seed=3 | dpo |" in build_report(lone).read_text()


def test_gold_reward_is_the_score_when_any_run_has_it(tmp_path: Path, figure_labels):
    sweep = tmp_path / "sweep"
    make_job(sweep, ["method=dpo", "seed=0"], metrics("dpo", 2.0, 0.3))
    make_job(sweep, ["method=ppo", "seed=0"], {**metrics("ppo", 3.0, 0.5), "eval/rm_reward": 7.0})
    report = build_report(sweep).read_text()
    assert "Gold reward: mean over held-out prompts with a bootstrap 95% interval" in report
    assert "| run | method | knob | seed | gold reward [95% CI] | KL | RM score | BLEU |" in report
    assert "win rate (gold)" in report and "no gold" not in report.lower()
    assert "RM accuracy" not in report  # no reward-model job, no accuracy columns
    assert "gold reward (mean)" in figure_labels["frontier.png"]
    assert "win rate vs SFT (gold)" in figure_labels["bars.png"]


def test_without_gold_reward_the_rm_score_is_the_score(tmp_path: Path, figure_labels):
    sweep = tmp_path / "sweep"
    for seed, rm in ((0, 5.0), (1, 6.0)):
        make_job(sweep, ["method=dpo", "method.beta=0.1", f"seed={seed}"], rm_metrics("dpo", 2, rm))
    make_job(sweep, ["method=ppo", "method.kl_coef=0.05", "seed=0"], rm_metrics("ppo", 3.0, 8.0))

    report = build_report(sweep).read_text()
    assert "3 runs, 0 failed. RM score: mean over held-out prompts;" in report
    assert "No run logged a gold reward (`eval/gold_reward`)" in report
    assert "| run | method | knob | seed | RM score | KL | BLEU | win rate (RM) |" in report
    assert "gold reward" not in report.replace("logged a gold reward", "")
    assert "| 5.000 | 2 |" in report  # the per-run score cell, without an interval
    assert "| dpo | beta=0.1 | 2 | 5.5 ± 0.5 | 2 ± 0 | 0.1 ± 0 | 0.7 ± 0 |" in report
    for png in ("frontier.png", "bars.png"):
        assert (sweep / png).stat().st_size > 1000 and f"({png})" in report
    assert "RM score (learned reward model; no gold reward)" in figure_labels["frontier.png"]
    assert "win rate vs SFT (RM score)" in figure_labels["bars.png"]


def test_reward_model_runs_show_accuracy_next_to_the_lexical_baseline(tmp_path: Path):
    sweep = tmp_path / "sweep"
    for seed, acc in ((0, 0.97), (1, 0.95)):
        make_job(
            sweep,
            ["method=reward", f"seed={seed}"],
            {
                "method": "reward",
                "eval/accuracy": acc,
                "eval/accuracy_lexical_baseline": 0.972,
                "time/wall_s": 60.0,
            },
        )
    report = build_report(sweep).read_text()
    assert "| win rate (RM) | RM accuracy | lexical baseline accuracy | length |" in report
    assert "| 0.97 | 0.972 |" in report and "| 0.95 | 0.972 |" in report
    assert "| 0.96 ± 0.01 | 0.972 ± 0 |" in report
    assert not (sweep / "frontier.png").exists()  # no policy was evaluated: nothing to plot


def test_unreadable_metrics_json_is_a_failed_job_and_the_report_is_still_built(tmp_path: Path):
    sweep = tmp_path / "sweep"
    make_job(sweep, ["method=dpo", "seed=0"], metrics("dpo", 1.0, 0.3))
    cut = make_job(sweep, ["method=dpo", "seed=1"], metrics("dpo", 1.0, 0.4))
    (cut / "metrics.json").write_text('{"method": "dpo", "eval/kl": 1.')  # cut short
    listed = make_job(sweep, ["method=dpo", "seed=2"], metrics("dpo", 1.0, 0.5))
    (listed / "metrics.json").write_text("[]")
    report = build_report(sweep).read_text()
    assert "3 runs, 2 failed" in report
    rows = {line.split(" | ")[0]: line for line in report.splitlines() if "| seed=" in line}
    cut_short = "**failed**: unreadable metrics.json (Expecting ',' delimiter: line 1 column"
    assert cut_short in rows["| seed=1"]
    assert "**failed**: unreadable metrics.json (a JSON list, not an object)" in rows["| seed=2"]
    assert "| dpo | - | 1 | 0.3 |" in report  # the readable job alone, no spread claimed


def compare_cli(path: Path) -> subprocess.CompletedProcess:
    """`rlhf-compare PATH` (python -m rlhf_exp.compare) in a process of its own."""
    command = [sys.executable, "-m", "rlhf_exp.compare", str(path)]
    return subprocess.run(command, capture_output=True, text=True)


SWEEP_DIR = (
    "expected a sweep dir (outputs/multiruns/DATE/TIME, with Hydra's multirun.yaml and a dir "
    "per job)"
)


def test_cli_rebuilds_report_and_rejects_what_is_not_a_sweep(tmp_path: Path):
    sweep = tmp_path / "sweep"
    make_job(sweep, ["method=dpo", "seed=0"], metrics("dpo", 1.0, 0.1))
    ok = compare_cli(sweep)
    assert ok.returncode == 0 and (sweep / "comparison.md").is_file()

    # a dir of single runs (outputs/runs/DATE): Hydra's .hydra/hydra.yaml says mode RUN
    runs = tmp_path / "runs"
    for name in ("10-00-00-000001_dpo", "10-05-00-000001_sft"):
        (runs / name / ".hydra").mkdir(parents=True)
        (runs / name / ".hydra" / "overrides.yaml").write_text(f"- method={name[-3:]}\n")
        (runs / name / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
        status = {"method": name[-3:], "status": "interrupted", "phase": "training", "step": 4}
        (runs / name / "metrics.json").write_text(json.dumps(status))
    (tmp_path / "file").write_text("")
    cases = [
        (tmp_path / "none", "does not exist;"),
        (tmp_path / "file", "is a file;"),
        (
            runs,
            "is not a sweep dir: no multirun.yaml, its runs (10-00-00-000001_dpo, "
            "10-05-00-000001_sft) were not run with -m;",
        ),
        (tmp_path, "is not a sweep dir: no multirun.yaml, no job dirs;"),
    ]
    for path, what in cases:
        bad = compare_cli(path)
        assert bad.returncode == 2 and bad.stderr == f"error: {path} {what} {SWEEP_DIR}\n"
    assert sorted(p.name for p in runs.iterdir()) == ["10-00-00-000001_dpo", "10-05-00-000001_sft"]
    # a sweep dir holds job dirs before any report; one without jobs yet has none to report
    (runs / "10-00-00-000001_dpo" / ".hydra" / "hydra.yaml").write_text("hydra: {mode: MULTIRUN}")
    assert compare_cli(runs).returncode == 0  # Optuna's sweeper writes no multirun.yaml
    empty = tmp_path / "started"
    empty.mkdir()
    (empty / "multirun.yaml").write_text("hydra: {mode: MULTIRUN}\n")
    bad = compare_cli(empty)
    assert bad.returncode == 2 and bad.stderr.startswith("error: no Hydra job dirs")


def run_preset(preset: str, root: Path, cache: Path) -> tuple[subprocess.CompletedProcess, Path]:
    """`run.py -m experiment=PRESET` as a user runs it, outputs under `root`, the SFT policy and
    reward model from the session's shared cache; (the finished process, its sweep dir)."""
    from tests.conftest import run_cli

    result = run_cli("-m", f"experiment={preset}", f"paths.root_dir={root}",
                     f"paths.cache_dir={cache}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (sweep,) = (root / "outputs" / "multiruns").glob("*/*")
    return result, sweep


@pytest.mark.slow
def test_quick_comparison_preset_is_a_real_sweep_with_a_full_report(
    tmp_path: Path, shared_cache: Path
):
    result, sweep = run_preset("ppo_vs_dpo_quick", tmp_path, shared_cache)
    names = {p.name for p in sweep.iterdir() if p.is_dir()}
    expected = {
        f"arm={arm},seed={seed}" for arm in ("dpo_beta_0.1", "ppo_kl_0.05") for seed in (0, 1)
    }
    assert names == expected
    for name in expected:
        job = json.loads((sweep / name / "metrics.json").read_text())
        assert "status" not in job and job["eval/kl"] == job["eval/kl"]  # finished, not NaN
    report = (sweep / "comparison.md").read_text()
    assert "4 runs, 0 failed" in report
    assert all(f"| {name} |" in report for name in expected)
    assert "| dpo | beta=0.1 | 2 |" in report and "| ppo | kl_coef=0.05 | 2 |" in report
    for png in ("frontier.png", "curves.png", "bars.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the terminal: the mean table and the report's path; no TensorBoard directory-watcher or
    # trainer log-dict lines (those go to the log file)
    terminal = result.stdout + result.stderr
    assert "Mean ± std over seeds:" in result.stdout
    assert "| dpo | beta=0.1 | 2 |" in result.stdout.split("Mean ± std over seeds:")[1]
    assert f"comparison report: {sweep / 'comparison.md'}" in terminal
    assert "Directory watcher" not in terminal and "No path found" not in terminal
    assert "{'loss'" not in terminal
    dpo_log = (sweep / "arm=dpo_beta_0.1,seed=0" / "run.log").read_text()
    assert "{'loss'" in dpo_log
    check_tensorboard_dashboard(sweep)


def check_tensorboard_dashboard(sweep: Path) -> None:
    """A real TensorBoard over the finished sweep: every run, its scalars, HParams columns of
    both methods' KL knobs, and the samples text, as the dashboard reads them."""
    from tests.tensorboard_live import live_tensorboard, quote

    with live_tensorboard(sweep) as get:
        runs = set(get("/data/runs"))
        assert runs == {
            f"arm={arm},seed={seed}/tensorboard"
            for arm in ("dpo_beta_0.1", "ppo_kl_0.05")
            for seed in (0, 1)
        }
        tags = get("/data/plugin/scalars/tags")
        dpo = "arm=dpo_beta_0.1,seed=0/tensorboard"
        assert {"eval/kl", "eval/gold_reward"} <= set(tags[dpo])
        points = get(f"/data/plugin/scalars/scalars?run={quote(dpo)}&tag={quote('eval/kl')}")
        assert points and all(len(p) == 3 for p in points)  # [wall time, step, value]
        experiment = get("/data/plugin/hparams/experiment", {"experimentName": ""})
        columns = {h["name"] for h in experiment["hparamInfos"]}
        assert {"method", "seed", "beta", "kl_coef"} <= columns
        text = get("/data/plugin/text/tags")
        assert all("eval/samples/text_summary" in text[run] for run in runs)


@pytest.mark.slow
def test_methods_quick_preset_reports_every_method(tmp_path: Path, shared_cache: Path):
    _, sweep = run_preset("methods_quick", tmp_path, shared_cache)
    arms = ("dpo_beta_0.1", "kto_beta_0.1", "ppo_kl_0.05", "rloo_beta_0.05", "grpo_beta_0.05")
    expected = {f"arm={arm},seed=0" for arm in (*arms, "online_dpo_beta_0.1", "bon_n_4")}
    assert {p.name for p in sweep.iterdir() if p.is_dir()} == expected
    methods = set()
    for name in expected:
        job = json.loads((sweep / name / "metrics.json").read_text())
        assert "status" not in job, job.get("error")
        assert job["eval/gold_reward"] == job["eval/gold_reward"]  # evaluated alike, not NaN
        methods.add(job["method"])
    assert methods == {"dpo", "kto", "ppo", "rloo", "grpo", "online_dpo", "best_of_n"}
    report = (sweep / "comparison.md").read_text()
    assert "7 runs, 0 failed" in report
    for row in ("| dpo | beta=0.1 |", "| kto | beta=0.1 |", "| ppo | kl_coef=0.05 |"):
        assert row in report, row
    for row in ("| rloo | beta=0.05 |", "| grpo | beta=0.05 |", "| online_dpo | beta=0.1 |"):
        assert row in report, row
    for row in ("| best_of_n | n=4 |",):
        assert row in report, row
    assert (sweep / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_frontier_quick_preset_matched_budget_intervals_and_reading(
    tmp_path: Path, shared_cache: Path
):
    _, sweep = run_preset("frontier_quick", tmp_path, shared_cache)
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(jobs) == 8 and all("status" not in j for j in jobs)
    # one budget, the same policy-sampled labels behind every method
    assert {j["data/labels/budget"] for j in jobs} == {300.0}
    assert {j["data/labels/used"] for j in jobs} == {300.0}
    assert {j["data/labels/policy_pairs"] for j in jobs} == {1.0}
    assert all(0.5 < j["data/labels/agreement_with_gold"] < 1.0 for j in jobs)  # BT noise
    assert all((p.parent / "eval_scores.json").is_file() for p in sweep.glob("*/metrics.json"))
    report = (sweep / "comparison.md").read_text()
    assert "Label budget: 300 preference labels, pairs sampled from the SFT policy" in report
    assert "every method the same budget" in report
    assert "## Frontier: each setting over seeds and prompts" in report
    for row in ("| dpo | beta=0.1 | 2 |", "| dpo | beta=0.5 | 2 |", "| best_of_n | n=4 | 2 |"):
        assert row in report, row
    # n=4 before n=16: knobs in numeric order
    assert report.index("| best_of_n | n=4 | 2 |") < report.index("| best_of_n | n=16 | 2 |")
    assert "## Reading" in report and "Does dpo's frontier dominate?" in report
    assert (sweep / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # rebuilt from the files alone
    (sweep / "comparison.md").unlink()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "rlhf_exp.compare", str(sweep)], capture_output=True, text=True
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (sweep / "comparison.md").read_text() == report


def test_curves_average_seeds_per_setting_with_labelled_axes(tmp_path: Path, figure_labels):
    from rlhf_exp.compare import seed_band

    # two seeds of one setting: one line (mean) at the steps both logged, band = their std
    steps, mean, std = seed_band([[(0, 1.0), (1, 2.0), (2, 3.0)], [(0, 3.0), (1, 4.0)]])
    assert steps == [0, 1] and mean == [2.0, 3.0] and std == [1.0, 1.0]

    sweep = tmp_path / "sweep"
    for seed, kl in ((0, 2.0), (1, 4.0)):
        make_job(sweep, ["method=dpo", "method.beta=0.1", f"seed={seed}"], metrics("dpo", kl, 0.3))
    make_job(sweep, ["method=ppo", "method.kl_coef=0.05", "seed=0"], metrics("ppo", 3.0, 0.5))
    build_report(sweep)
    labels = figure_labels["curves.png"]
    assert "KL to reference (nats)" in labels and {"dpo", "ppo"} <= set(labels)
    assert "BLEU vs preferred references" in figure_labels["bars.png"]

    import matplotlib.pyplot as plt

    saved = {}
    original = plt.Axes.plot

    def record(ax, *args, **kwargs):
        saved.setdefault(ax.get_title() or id(ax), []).append(kwargs.get("label"))
        return original(ax, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "plot", record)
        build_report(sweep)
    lines = [label for labels in saved.values() for label in labels if label]
    assert sorted(lines) == ["beta=0.1 (n=2)", "kl_coef=0.05 (n=1)"]  # a line per setting
