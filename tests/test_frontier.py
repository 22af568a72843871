"""Frontier statistics (rlhf_exp/frontier.py): hierarchical bootstrap intervals per cell, the
dominance reading, numeric knob order, and cells built from job dirs' per-prompt scores."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf_exp.frontier import (
    Cell,
    cell_interval,
    cells_of,
    dominance,
    knob_order,
    reading,
)


def test_interval_holds_the_mean_and_widens_with_seed_disagreement():
    rng = random.Random(0)
    agree = [[rng.gauss(0.5, 0.2) for _ in range(64)] for _ in range(3)]
    mean, low, high = cell_interval(agree)
    assert low < mean < high
    apart = [[v + shift for v in seed] for seed, shift in zip(agree, (-0.3, 0.0, 0.3), strict=True)]
    _, low2, high2 = cell_interval(apart)
    assert high2 - low2 > 2 * (high - low)  # training randomness (seeds) is in the interval
    # one seed: the prompts' bootstrap alone, about +-2 standard errors
    one = agree[0]
    m, lo, hi = cell_interval([one])
    se = (sum((v - m) ** 2 for v in one) / len(one)) ** 0.5 / len(one) ** 0.5
    assert 3 * se < hi - lo < 5 * se


def _cell(method: str, knob: str, kl: float, score: float, half: float = 0.01) -> Cell:
    return Cell(method, knob, kl, score, score - half, score + half, 3)


def test_dominance_reading():
    dpo = [_cell("dpo", "beta=0.5", 1.0, 0.5), _cell("dpo", "beta=0.1", 3.0, 0.8)]
    worse = [_cell("ppo", "kl_coef=0.2", 1.5, 0.4), _cell("ppo", "kl_coef=0.05", 4.0, 0.7)]
    better = [_cell("rloo", "beta=0.05", 2.0, 0.9)]
    lower = [_cell("bon", "n=4", 0.5, 0.3)]
    cells = [*dpo, *worse, *better, *lower]
    v = dominance(cells, "dpo", "ppo")
    assert v.dominates and v.separated and "kl_coef=0.2" in v.sentence  # the closest call
    v = dominance(cells, "dpo", "rloo")
    assert not v.dominates and v.separated and "beta=0.05" in v.sentence
    v = dominance(cells, "dpo", "bon")
    assert not v.dominates and "below every dpo setting" in v.sentence
    close = [*dpo, _cell("kto", "beta=0.1", 1.0, 0.505, half=0.05)]
    v = dominance(close, "dpo", "kto")
    assert not v.dominates and not v.separated and "not resolved" in v.sentence
    text = reading(cells)
    assert text.startswith("Does dpo's frontier dominate? Over 3 other methods it dominates 1")


def test_knobs_sort_by_number():
    knobs = ["n=16", "n=4", "n=64", "beta=0.5", "beta=0.05"]
    assert sorted(knobs, key=knob_order) == ["beta=0.05", "beta=0.5", "n=4", "n=16", "n=64"]


@dataclass
class _Job:
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)


def test_cells_read_per_prompt_scores_of_each_seed(tmp_path: Path):
    jobs = []
    for seed, scores in enumerate(([0.1, 0.2, 0.3], [0.5, 0.6, 0.7])):
        d = tmp_path / f"seed{seed}"
        d.mkdir()
        (d / "eval_scores.json").write_text(json.dumps({"gold": scores}))
        jobs.append(_Job(d, {"eval/gold_reward": sum(scores) / 3, "eval/kl": 1.0 + seed}))
    no_file = tmp_path / "nofile"
    no_file.mkdir()
    (cell,) = cells_of({("dpo", "beta=0.1"): jobs}, "eval/gold_reward")
    assert cell.seeds == 2 and abs(cell.score - 0.4) < 1e-9 and cell.kl == 1.5
    assert 0.1 < cell.low < 0.4 < cell.high < 0.7
    # a job without per-prompt scores counts by its mean
    (only,) = cells_of(
        {("bon", "n=4"): [_Job(no_file, {"eval/gold_reward": 0.3, "eval/kl": 0.6})]},
        "eval/gold_reward",
    )
    assert only.low == only.score == only.high == 0.3
