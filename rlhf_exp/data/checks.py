"""Data that cannot train is refused before any stage trains, with a count and the knob to change.

A run is a chain of stages (DPO stands on SFT; PPO on SFT and a reward model). Each method
checks its own rows, but only when it starts: a preference file whose pairs are all ties, or a
token budget that cuts every pair into a tie, would be found after the SFT stage had trained.
`check_trainable` looks first, for every stage of the run that trains on pairs
(`TrainSpec.TRAINS_ON_PAIRS`) and is not in the artifact cache yet:

- the task has pairs to train on and held-out pairs (`pref_train`, `pref_test`; the first
  `dataset.n_labels` of them; pairs sampled from the SFT policy, `dataset.pairs=policy`, do
  not exist before it and are left to the method);
- not every pair has the same text as chosen and rejected;
- some pairs survive tokenising and cutting to the stage's token budget (`tokens.py`: pairs
  whose kept tokens are equal are ties, dropped and counted).

The tokenised splits go into the artifact cache as the method would store them, so the method
reuses them. The embedded generator and the normalisers refuse their own cases (a
`dataset.min_gold_margin` no pair reaches; one text as chosen and rejected without a prompt).

    python run.py method=dpo debug=fast dataset=files \
        +dataset.data_files.preference=ties.jsonl   # error: ... all 40 pairs have the same ...
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rlhf_exp.errors import UserError

if TYPE_CHECKING:
    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.config.schema import RunConfig
    from rlhf_exp.context import RunContext

log = logging.getLogger(__name__)

Needs = Callable[["RunConfig"], Sequence[str]]
PAIR_SPLITS = ("pref_train", "pref_test")


def pair_stages(run: RunConfig, cache: ArtifactCache, needs: Needs) -> list[tuple[str, RunConfig]]:
    """(key prefix of its knobs, config) of each stage of `run` that trains on pairs and is
    not built yet: the run itself, and the upstream stages it needs (`needs(run)`, the method
    registry's answer; and theirs) that are missing from the cache. A stage given as a path
    (`upstream.<stage>.path`) trains nothing."""
    from rlhf_exp.context import stage_key, upstream_run

    found: list[tuple[str, RunConfig]] = []

    def visit(stage_run: RunConfig, prefix: str) -> None:
        if type(stage_run.method).TRAINS_ON_PAIRS:
            found.append((prefix, stage_run))
        for stage in needs(stage_run):
            if getattr(stage_run.upstream, stage).path is not None:
                continue
            child = upstream_run(stage_run, stage)
            if cache.lookup(stage, stage_key(child)) is None:
                visit(child, f"upstream.{stage}.overrides")

    visit(run, "method")
    return found


def _tokenizer(run: RunConfig, ctx: RunContext) -> Any:
    """The tokenizer the pair stages will use: the SFT policy's (its dir, the cached one, else
    the base model's, from which SFT takes it)."""
    from rlhf_exp.context import stage_key, upstream_run
    from rlhf_exp.models import load_tokenizer

    start = run.upstream.sft.path
    if start is None:
        cached = ctx.cache.lookup("sft", stage_key(upstream_run(run, "sft")))
        start = str(cached / "model") if cached is not None else ctx.base_model()
    return load_tokenizer(str(start), run.model)


def count_ties(rows: Any) -> int:
    """Pairs whose chosen and rejected are the same text."""
    return sum(c == r for c, r in zip(rows["chosen"], rows["rejected"], strict=True))


def check_pairs(rows: Any, split: str, dataset: str, method: str) -> None:
    """`rows` (a normalised preference split) exist and are not all exact ties."""
    if rows is None or len(rows) == 0:
        raise UserError(
            f"dataset {dataset!r} has no {split} rows, and method={method} trains on "
            "preference pairs; give it a preference split (dataset.data_files.preference)"
        )
    ties = count_ties(rows)
    if ties == len(rows):
        raise UserError(
            f"dataset split {split!r}: all {ties} pairs have the same text as chosen and "
            f"rejected: no preference for method={method} to learn; check the data (and "
            "dataset.columns, which names the chosen and rejected columns)"
        )


def check_trainable(run: RunConfig, ctx: RunContext, needs: Needs) -> None:
    """Refuse, as one `UserError`, data that cannot train a stage of `run` (module docstring).

    `needs(run)`: the upstream stages a run's method stands on (the runner passes the method
    registry's, which data code does not import). Does nothing (and loads nothing) when no
    stage still to train reads pairs.
    """
    from rlhf_exp.data import load_task
    from rlhf_exp.data.loading import load_raw
    from rlhf_exp.data.tokens import TokenBudget, require_rows, tokenize_split

    if getattr(run.dataset, "pairs", "generator") == "policy":
        return  # pairs sampled from the SFT policy (data/policy_pairs.py): none exist before it
    stages = pair_stages(run, ctx.cache, needs)
    if not stages:
        return
    # Raw rows first (cached; the embedded generator refuses a margin no pair reaches), so a
    # refusal there comes before a tokenizer is built for the tiny base.
    load_raw(run.dataset, ctx.cache.root)
    tokenizer = _tokenizer(run, ctx)
    task = load_task(run.dataset, tokenizer, ctx.cache.root)
    n_labels = getattr(run.dataset, "n_labels", None)  # the label budget: the first n pairs
    if n_labels is not None and task.pref_train is not None and n_labels < len(task.pref_train):
        task = dataclasses.replace(task, pref_train=task.pref_train.select(range(n_labels)))
    for prefix, stage in stages:
        spec = stage.method
        budget = TokenBudget(spec.max_length, spec.max_completion_length)
        for split in PAIR_SPLITS:
            rows = getattr(task, split)
            check_pairs(rows, split, run.dataset.name, spec.name)
            done = tokenize_split(
                rows,
                "preference",
                tokenizer,
                budget,
                cache=ctx.cache,
                num_proc=run.dataset.num_proc,
                split=split,
            )
            require_rows(done, split, f"{prefix}.max_length / {prefix}.max_completion_length")
        log.info("data: the pairs of stage %s fit its token budget", spec.name)
