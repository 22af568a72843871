"""Reward/KL frontiers of a sweep: per-cell intervals over seeds and prompts, and a reading.

A cell is one method at one setting of its KL knob, run with several seeds. Its interval is a
hierarchical bootstrap (resample the seeds, then each chosen seed's prompts) of the mean gold
reward, so it holds both the training randomness (seeds) and the evaluation's (prompts);
with one seed it is the prompts' bootstrap alone. The per-prompt scores come from each job's
`eval_scores.json` (evaluation.SCORES_FILE); a job without it contributes its mean only.

`dominance` answers the question the DPO paper's Figure 2 asks of a sweep: does method A's
frontier dominate method B's, i.e. for every cell of B, does some cell of A reach at most B's
KL with at least B's score? It says which cells decide it and whether the intervals separate.
"""

from __future__ import annotations

import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

N_BOOTSTRAP = 2000


@dataclass(frozen=True)
class Cell:
    """One method + knob setting across its seeds."""

    method: str
    knob: str
    kl: float  # mean over seeds of the evaluation's KL (nats)
    score: float  # mean over seeds of the mean score
    low: float  # 95% interval of `score`
    high: float
    seeds: int


def cell_interval(
    per_seed: Sequence[Sequence[float]], *, seed: int = 0, n: int = N_BOOTSTRAP
) -> tuple[float, float, float]:
    """(mean, 2.5%, 97.5%) of the mean over seeds of each seed's mean score.

    `per_seed[i]` holds seed i's per-prompt scores (a single value when only its mean is
    known). Hierarchical bootstrap: seeds with replacement, then prompts within each."""
    groups = [list(g) for g in per_seed if len(g) > 0]
    if not groups:
        raise ValueError("cell_interval needs at least one seed with scores")
    mean = statistics.fmean(statistics.fmean(g) for g in groups)
    rng = random.Random(seed)
    draws = []
    for _ in range(n):
        chosen = [groups[rng.randrange(len(groups))] for _ in groups]
        draws.append(statistics.fmean(statistics.fmean(rng.choices(g, k=len(g))) for g in chosen))
    draws.sort()
    return mean, draws[int(0.025 * (n - 1))], draws[int(0.975 * (n - 1))]


@dataclass(frozen=True)
class Verdict:
    """Whether `a`'s frontier dominates `b`'s, and the cell of `b` that decides it."""

    a: str
    b: str
    dominates: bool
    separated: bool  # the deciding comparison's intervals do not overlap
    sentence: str


def dominance(cells: Sequence[Cell], a: str, b: str, score_name: str = "gold reward") -> Verdict:
    """Does method `a` dominate method `b`: for every cell of `b`, a cell of `a` with KL no
    larger and score no lower? The deciding cell of `b` is the one `a` beats by the least (or
    misses by the most)."""
    mine = [c for c in cells if c.method == a]
    theirs = [c for c in cells if c.method == b]
    if not mine or not theirs:
        raise ValueError(f"no cells for {a if not mine else b}")

    def best_below(kl: float) -> Cell | None:
        cands = [c for c in mine if c.kl <= kl]
        return max(cands, key=lambda c: c.score) if cands else None

    worst: tuple[float, Cell, Cell | None] | None = None
    for cell in theirs:
        match = best_below(cell.kl)
        gap = (match.score - cell.score) if match else float("-inf")
        if worst is None or gap < worst[0]:
            worst = (gap, cell, match)
    assert worst is not None
    gap, cell, match = worst
    where = f"{b} {cell.knob} ({score_name} {cell.score:.3f} at KL {cell.kl:.2f})"
    if match is None:
        low_kl = min(c.kl for c in mine)
        return Verdict(
            a, b, False, False,
            f"{a} does not dominate {b}: {where} sits at a KL below every {a} setting "
            f"(lowest {low_kl:.2f}), where {a} has no point to compare.",
        )  # fmt: skip
    separated = match.low > cell.high if gap >= 0 else match.high < cell.low
    pair = f"{a} {match.knob} ({match.score:.3f} at KL {match.kl:.2f})"
    if gap >= 0:
        how = "clearly" if separated else "within the intervals (not resolved)"
        sentence = f"{a} dominates {b} ({how}): its closest call is {where} against {pair}."
    else:
        how = "clearly" if separated else "within the intervals (not resolved)"
        sentence = (
            f"{a} does not dominate {b} ({how}): {where} beats every {a} setting at that KL "
            f"or less (best {pair})."
        )
    return Verdict(a, b, gap >= 0, separated, sentence)


def reading(cells: Sequence[Cell], anchor: str = "dpo", score_name: str = "gold reward") -> str:
    """Plain-language reading of the sweep: `anchor`'s frontier against every other method's."""
    methods = sorted({c.method for c in cells} - {anchor})
    if anchor not in {c.method for c in cells} or not methods:
        return ""
    verdicts = [dominance(cells, anchor, m, score_name) for m in methods]
    beaten = [v.b for v in verdicts if v.dominates]
    head = (
        f"Does {anchor}'s frontier dominate? Over {len(methods)} other methods it dominates "
        f"{len(beaten)} ({', '.join(beaten) or 'none'})."
    )
    return "\n".join([head, "", *(f"- {v.sentence}" for v in verdicts)])


# ------------------------------------------------------------------------- from a sweep
def knob_order(knob: str) -> tuple[str, float, str]:
    """Sort key of a knob label: by its key, then numerically (n=4 before n=16)."""
    key, _, value = knob.partition("=")
    try:
        return key, float(value), value
    except ValueError:
        return key, math.inf, value


def per_prompt_scores(job_dir: Path, score_key: str) -> list[float] | None:
    """A job's per-prompt scores for `score_key` (eval/gold_reward or eval/rm_reward), from
    its `eval_scores.json`; None when the job has none."""
    from rlhf_exp.evaluation import SCORES_FILE

    name = {"eval/gold_reward": "gold", "eval/rm_reward": "rm"}.get(score_key)
    path = job_dir / SCORES_FILE
    if name is None or not path.is_file():
        return None
    values = json.loads(path.read_text()).get(name)
    return [float(v) for v in values] if values else None


def cells_of(groups: dict[tuple[str, str], list[Any]], score_key: str) -> list[Cell]:
    """A `Cell` per (method, knob) group of finished jobs (objects with `.metrics`, `.path`);
    groups without the score or the KL are left out."""
    cells = []
    order = sorted(groups.items(), key=lambda g: (g[0][0], knob_order(g[0][1])))
    for (method, knob), jobs in order:
        usable = [j for j in jobs if score_key in j.metrics and "eval/kl" in j.metrics]
        if not usable:
            continue
        per_seed = [
            per_prompt_scores(Path(j.path), score_key) or [float(j.metrics[score_key])]
            for j in usable
        ]
        mean, low, high = cell_interval(per_seed)
        kl = statistics.fmean(float(j.metrics["eval/kl"]) for j in usable)
        cells.append(Cell(method, knob, kl, mean, low, high, len(usable)))
    return cells


def cells_table(cells: Sequence[Cell], score_title: str) -> str:
    """Markdown: one row per cell, its score with the hierarchical 95% interval, and KL."""
    lines = [
        f"| method | knob | seeds | {score_title} | 95% CI (seeds x prompts) | KL |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c.method} | {c.knob} | {c.seeds} | {c.score:.3f} | "
            f"[{c.low:.3f}, {c.high:.3f}] | {c.kl:.3f} |"
        )
    return "\n".join(lines)
