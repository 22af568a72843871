"""What a method sees of the world: its `RunContext`, and the upstream stages it stands on.

A run's context gives the method its run dir, the artifact cache, the tracker, the starting
model, the data (normalised and tokenised under the method's token budget) and the model dirs
of the upstream stages it declared (`@register(..., needs=...)`). Those stages are resolved by
the runner before the method starts (`resolve_stages`), each from the artifact cache, trained
there first on a miss; a method never trains another stage as a side effect.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlhf_exp.artifacts import ArtifactCache
from rlhf_exp.config.schema import DatasetSpec, RunConfig, method_spec
from rlhf_exp.distributed import world_size
from rlhf_exp.errors import UserError
from rlhf_exp.tracking import Tracker

log = logging.getLogger(__name__)

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Bump when the tiny model builder changes, so cached tiny bases are rebuilt.
TINY_BUILDER_VERSION = 1


@dataclass
class RunContext:
    run: RunConfig
    run_dir: Path
    cache: ArtifactCache
    tracker: Tracker
    # split -> statistics of what the method was fed (see `tokenize`)
    data_report: dict[str, dict[str, float]] = field(default_factory=dict)
    # upstream stage -> its model dir, filled by `resolve_stages` before the method runs
    stages: dict[str, Path] = field(default_factory=dict)

    @property
    def model_dir(self) -> Path:
        """Where the method saves its final model (safetensors + tokenizer)."""
        return self.run_dir / "model"

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def base_model(self) -> str:
        """The pretrained starting point: a hub id or local dir, or the tiny model (cached).

        The tiny model's tokenizer learns the dataset's own text (the embedded task's for the
        embedded task), so the entry is keyed by that text's source and content.
        """
        spec = self.run.model
        if spec.name_or_path is not None:
            return spec.name_or_path
        data = self.run.dataset
        key = {
            "tiny": asdict(spec.tiny),
            "corpus": "embedded" if data.source == "embedded" else corpus_key(data),
            "builder_version": TINY_BUILDER_VERSION,
        }

        def build(out: Path) -> None:
            from rlhf_exp.data.corpus import corpus_texts
            from rlhf_exp.models.tiny import build_tiny_base

            if data.source != "embedded":
                log.info("tiny base: training its tokenizer on dataset %r's own text", data.name)
            build_tiny_base(spec.tiny, corpus_texts(data, self.cache.root), out / "model")

        return str(self.cache.get_or_build("base", key, build) / "model")

    def task(self, tokenizer: Any) -> Any:
        """The dataset's normalised splits (`rlhf_exp.data.TaskData`)."""
        from rlhf_exp.data import load_task

        return load_task(self.run.dataset, tokenizer, self.cache.root)

    def reward_scorer(self, device: Any = None) -> Any:
        """The learned reward model of this run's model+data (upstream `reward`) as a scorer,
        cutting texts by the budget it was trained with; the one place that builds it."""
        from rlhf_exp.data.tokens import TokenBudget
        from rlhf_exp.models import load_reward_model, load_tokenizer
        from rlhf_exp.rewards.model_scorer import RewardModelScorer

        rm_dir = str(self.upstream("reward"))
        tokenizer = load_tokenizer(rm_dir, self.run.model)
        rm = load_reward_model(rm_dir, self.run.model, tokenizer).eval().requires_grad_(False)
        if device is not None:
            rm.to(device)
        trained = upstream_run(self.run, "reward").method
        budget = TokenBudget(trained.max_length, trained.max_completion_length)
        return RewardModelScorer(rm, tokenizer, budget, self.run.eval.batch_size)

    def tokenize(self, rows: Any, kind: str, tokenizer: Any, split: str) -> Any:
        """`rows` ("preference" or "sft" kind) tokenised under this method's token budget.

        Cached by rows + tokenizer + budget; the split's statistics (lengths, what was cut,
        ties dropped) join the run's data report: logged now, `data/<split>/*` in metrics.
        """
        from rlhf_exp.data.tokens import TokenBudget, tokenize_split

        spec = self.run.method
        budget = TokenBudget(spec.max_length, spec.max_completion_length)
        result = tokenize_split(
            rows,
            kind,
            tokenizer,
            budget,
            cache=self.cache,
            num_proc=self.run.dataset.num_proc,
            split=split,
        )
        self.data_report[split] = result.stats
        line = _report_line(result.stats)
        log.info("data %s: %s", split, line)
        self.tracker.log_text(f"data/{split}", line)
        ties = int(result.stats.get("dropped_ties", 0))
        if ties:
            log.warning(
                "data %s: dropped %d of %d pairs whose chosen and rejected are the same tokens "
                "after cutting to max_length=%d / max_completion_length=%d (no preference left)",
                split,
                ties,
                int(result.stats["rows"]),
                budget.max_length,
                budget.max_completion_length,
            )
        return result

    def upstream(self, stage: str) -> Path:
        """Model dir of upstream `stage`, resolved before the method started."""
        if stage not in self.stages:
            raise KeyError(
                f"method {self.run.method.name!r} asked for upstream stage {stage!r} without "
                f"declaring it in its needs (declared: {', '.join(self.stages) or 'none'})"
            )
        return self.stages[stage]

    def resolve_stages(self, stages: Sequence[str]) -> None:
        """Resolve each of `stages`: the user's explicit path, else the cache, where a miss
        trains the stage first (under the cache's lock, in its own temp dir)."""
        for stage in stages:
            self.stages[stage] = self._resolve(stage)

    def _resolve(self, stage: str) -> Path:
        source = getattr(self.run.upstream, stage)
        if source.path is not None:
            return Path(source.path)
        child = upstream_run(self.run, stage)
        if world_size() > 1 and self.cache.lookup(stage, stage_key(child)) is None:
            # Trained here, the stage's trainer would wait for ranks that are blocked on the
            # cache lock: a deadlock. One process builds it first.
            raise UserError(
                f"upstream stage {stage!r} is not in the cache; build it with one process first "
                f"(the same command without accelerate launch, or python run.py method={stage} "
                "with the same model/dataset/lora/debug)"
            )

        def build(tmp: Path) -> None:
            from rlhf_exp.runner import execute  # the runner runs stages; it imports us

            # Training the stage here (a cache miss) draws random numbers; without this, a
            # run's results would depend on whether its upstream stages were cached.
            with preserved_rng():
                execute(child, tmp, self.cache)

        return self.cache.get_or_build(stage, stage_key(child), build) / "model"


@contextmanager
def preserved_rng() -> Iterator[None]:
    """Python, NumPy and torch (CPU and CUDA) random states are as before on exit."""
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])


def upstream_run(run: RunConfig, stage: str) -> RunConfig:
    """The config of upstream `stage` for `run`: same model, data and LoRA; its own method."""
    # The stage's YAML interpolates the dataset's keys (its token budget), so it is resolved
    # beside this run's dataset and model.
    node = OmegaConf.create(
        {
            "dataset": asdict(run.dataset),
            "model": asdict(run.model),
            "method": OmegaConf.load(CONF_DIR / "method" / f"{stage}.yaml"),
        }
    )
    defaults = OmegaConf.to_container(node, resolve=True)["method"]
    overrides = getattr(run.upstream, stage).overrides
    spec = method_spec(stage, {**defaults, **overrides}, prefix=f"upstream.{stage}.overrides")
    return dataclasses.replace(run, method=spec, seed=run.upstream.seed)


def stage_key(run: RunConfig) -> dict[str, Any]:
    """Everything that decides a stage's output; the cache key of that output."""
    from rlhf_exp.data.loading import source_fingerprint
    from rlhf_exp.methods import get_method

    upstream = {}
    for stage in get_method(run.method.name).needs_for(run):
        path = getattr(run.upstream, stage).path
        upstream[stage] = (
            {"path": str(Path(path).resolve())} if path else stage_key(upstream_run(run, stage))
        )
    return {
        "method": asdict(run.method),
        "model": asdict(run.model),
        "dataset": asdict(run.dataset),
        "data": source_fingerprint(run.dataset),  # a changed file changes the key
        "lora": asdict(run.lora),
        "seed": run.seed,
        "upstream": upstream,
    }


def corpus_key(data: DatasetSpec) -> dict[str, Any]:
    """What a user dataset's text depends on: its source's content, and the column renames."""
    from rlhf_exp.data.loading import source_fingerprint

    return {"source": source_fingerprint(data), "columns": data.columns}


def _report_line(stats: dict[str, float]) -> str:
    """One log line of a split's data statistics, e.g. `rows 2091, prompt tokens p50/p90/max
    ..., prompt cut 41%, completion cut 3%, ties dropped 12`."""
    parts = [f"rows {int(stats['rows'])}"]
    for part in ("prompt", "chosen", "rejected", "completion"):
        if f"{part}_tokens_p50" in stats:
            p50, p90, top = (stats[f"{part}_tokens_{q}"] for q in ("p50", "p90", "max"))
            parts.append(f"{part} tokens p50/p90/max {p50:.0f}/{p90:.0f}/{top:.0f}")
    parts.append(f"prompt cut {stats['prompt_truncated_fraction']:.1%}")
    parts.append(f"completion cut {stats['completion_truncated_fraction']:.1%}")
    if "dropped_ties" in stats:
        parts.append(f"ties dropped {int(stats['dropped_ties'])}")
    return ", ".join(parts)
