"""Data that cannot train is refused before any stage trains, with a count and the knob to change.

A run is a chain of stages (DPO stands on SFT; PPO on SFT and a reward model). Each method
checks its own rows, but only when it starts: a preference file whose pairs are all ties, or a
token budget that cuts every pair into a tie, would be found after the SFT stage had trained.
`check_trainable` looks first, at every stage of the run still to train (the run itself and
the upstream stages it needs that are not in the artifact cache yet):

- a stage has rows of its kind at all: pairs for one that trains on pairs
  (`TrainSpec.TRAINS_ON_PAIRS`: reward, DPO), sft rows or pairs for SFT. A missing kind is
  refused naming why the run needs that stage (e.g. `eval.reward_model=true` scores the
  evaluation with a reward model) and what would do instead: a split, a trained stage
  (`upstream.<stage>.path`) or the knob that drops the stage;
- a stage that reads the `unpaired` split (KTO) gets its rows normalised: columns, labels
  (true/false) and texts;
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
    python run.py method=kto debug=fast dataset=files \
        +dataset.data_files.unpaired=kto.jsonl      # error: ... the reward model that ...
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rlhf_exp.errors import UserError

if TYPE_CHECKING:
    from rlhf_exp.artifacts import ArtifactCache
    from rlhf_exp.config.schema import RunConfig
    from rlhf_exp.context import RunContext

log = logging.getLogger(__name__)

Needs = Callable[["RunConfig"], Sequence[str]]
PAIR_SPLITS = ("pref_train", "pref_test")
# What a stage is called in an error: the artifact it gives the stage that stands on it.
_ARTIFACT = {"sft": "SFT policy", "reward": "reward model"}


@dataclass(frozen=True)
class Stage:
    """A stage of a run still to train."""

    prefix: str  # key prefix of its knobs: "method", or "upstream.<stage>.overrides"
    run: RunConfig
    parent: RunConfig | None  # the stage that stands on it; None for the run itself


def stages_to_train(run: RunConfig, cache: ArtifactCache, needs: Needs) -> list[Stage]:
    """The run itself, and the upstream stages it needs (`needs(run)`, the method registry's
    answer; and theirs) that are missing from the cache, the run first. A stage given as a
    path (`upstream.<stage>.path`) trains nothing."""
    from rlhf_exp.context import stage_key, upstream_run

    found: list[Stage] = []

    def visit(stage_run: RunConfig, prefix: str, parent: RunConfig | None) -> None:
        found.append(Stage(prefix, stage_run, parent))
        for stage in needs(stage_run):
            if getattr(stage_run.upstream, stage).path is not None:
                continue
            child = upstream_run(stage_run, stage)
            if cache.lookup(stage, stage_key(child)) is None:
                visit(child, f"upstream.{stage}.overrides", stage_run)

    visit(run, "method", None)
    return found


def _give(spec: Any, split: str) -> str:
    """The override that gives the dataset a `split`."""
    if spec.source == "hub":
        return f"dataset.hub_splits.{split}=<hub split>"
    return f"+dataset.data_files.{split}=<file>"


def _missing(stage: Stage, rows: str, needs: Needs) -> UserError:
    """The dataset has no `rows` for `stage`: why the run trains that stage, and what would
    do instead (a split; for an upstream stage, a trained one or the knob that drops it)."""
    method, data = stage.run.method.name, stage.run.dataset
    has_none = f"dataset {data.name!r} has no {rows}"
    if stage.parent is None:
        return UserError(f"{has_none} to train method={method} on; give it {_fix(stage, data)}")
    name = _ARTIFACT.get(method, f"{method} stage")
    parent = stage.parent.method.name
    why = f"the {name} that method={parent} stands on"
    drop = ""
    if method == "reward" and stage.parent.eval.reward_model:
        without = dataclasses.replace(stage.parent.eval, reward_model=False)
        if method not in needs(dataclasses.replace(stage.parent, eval=without)):
            why = f"the {name} that method={parent} scores its evaluation with"
            why += " (eval.reward_model=true)"
            drop = "set eval.reward_model=false, "
    trained = f"upstream.{method}.path=<dir>"
    return UserError(
        f"{has_none} to train {why}; {drop}give it {_fix(stage, data)}, or a trained "
        f"{name} ({trained})"
    )


def _fix(stage: Stage, data: Any) -> str:
    """The splits that would give `stage` its rows."""
    pairs = f"a preference split ({_give(data, 'preference')})"
    if type(stage.run.method).TRAINS_ON_PAIRS:
        return pairs
    return f"an sft split ({_give(data, 'sft')}) or {pairs}"


def check_sources(stages: Sequence[Stage], needs: Needs) -> None:
    """Each stage's kind of rows is mapped at all (`mapped_splits`; nothing is read): pairs
    for a stage that trains on pairs, sft rows or pairs for SFT. The embedded generator
    makes both; sampled pairs (`dataset.pairs=policy`) need none."""
    from rlhf_exp.data.loading import mapped_splits

    data = stages[0].run.dataset  # one dataset for every stage of a run
    if data.source == "embedded":
        return
    splits = mapped_splits(data)
    sampled = getattr(data, "pairs", "generator") == "policy"
    # Pairs first: a reward model the evaluation asks for is the less obvious stage, and the
    # knob that drops it (eval.reward_model=false) may leave SFT as the only stage to fix.
    for stage in stages:
        if type(stage.run.method).TRAINS_ON_PAIRS and not sampled and "preference" not in splits:
            raise _missing(stage, "preference pairs", needs)
    for stage in stages:
        if type(stage.run.method).TRAINS_ON_SFT_ROWS and not {"sft", "preference"} & splits:
            raise _missing(stage, "sft rows (nor preference pairs)", needs)


def check_unpaired(run: RunConfig, tokenizer: Any, cache_root: Any) -> None:
    """Normalise the `unpaired` split as its method will: columns, labels and texts."""
    from rlhf_exp.data.formats import normalize_unpaired
    from rlhf_exp.data.loading import load_raw_split

    raw = load_raw_split(run.dataset, "unpaired", cache_root)
    normalize_unpaired(raw, tokenizer, run.dataset.columns)


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
    registry's, which data code does not import). Loads nothing when no stage still to train
    reads pairs or unpaired rows.
    """
    from rlhf_exp.data import load_task
    from rlhf_exp.data.loading import load_raw, mapped_splits
    from rlhf_exp.data.tokens import TokenBudget, require_rows, tokenize_split

    stages = stages_to_train(run, ctx.cache, needs)
    check_sources(stages, needs)
    if "unpaired" in mapped_splits(run.dataset) and any(
        type(s.run.method).TRAINS_ON_UNPAIRED for s in stages
    ):
        check_unpaired(run, _tokenizer(run, ctx), ctx.cache.root)
    if getattr(run.dataset, "pairs", "generator") == "policy":
        return  # pairs sampled from the SFT policy (data/policy_pairs.py): none exist before it
    pairs = [s for s in stages if type(s.run.method).TRAINS_ON_PAIRS]
    if not pairs:
        return
    # Raw rows first (cached; the embedded generator refuses a margin no pair reaches), so a
    # refusal there comes before a tokenizer is built for the tiny base.
    load_raw(run.dataset, ctx.cache.root)
    tokenizer = _tokenizer(run, ctx)
    task = load_task(run.dataset, tokenizer, ctx.cache.root)
    n_labels = getattr(run.dataset, "n_labels", None)  # the label budget: the first n pairs
    if n_labels is not None and task.pref_train is not None and n_labels < len(task.pref_train):
        task = dataclasses.replace(task, pref_train=task.pref_train.select(range(n_labels)))
    for stage in pairs:
        spec, prefix = stage.run.method, stage.prefix
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
