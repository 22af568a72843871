"""What a method sees of the world: its `RunContext`, and the upstream stages it stands on.

A run's context gives the method its run dir, the artifact cache, the tracker, the starting
model, the data (normalised and tokenised under the method's token budget) and the model dirs
of the upstream stages it declared (`@register(..., needs=...)`). Those stages are resolved by
the runner before the method starts (`resolve_stages`), each from the artifact cache, trained
there first on a miss; a method never trains another stage as a side effect.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from rlhf_exp.artifacts import OWNER_FILE, ArtifactCache
from rlhf_exp.config.location import conf_dir
from rlhf_exp.config.schema import DatasetSpec, RunConfig, method_spec
from rlhf_exp.distributed import world_size
from rlhf_exp.errors import Interrupted, UserError
from rlhf_exp.tracking import Tracker

log = logging.getLogger(__name__)

CONF_DIR = conf_dir()  # the packaged or the repo's conf/ (config/location.py)
# Cache kinds built from a run's data alone (the tiny base, the rows, their tokenisation):
# removed again when the run is rejected (`runner.execute`); trained stages are kept.
DATA_KINDS = ("base", "data")
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
        """The dataset's normalised splits (`rlhf_exp.data.TaskData`), with this run's
        preference labels (`data/policy_pairs.py`)."""
        from rlhf_exp.data import load_task
        from rlhf_exp.data.policy_pairs import with_labels

        # the preference labels this run may use: policy-sampled pairs, the label budget
        return with_labels(load_task(self.run.dataset, tokenizer, self.cache.root), self)

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
        labels = self.data_report.get("labels")
        if split == "pref_train" and labels and labels["used"]:  # a tie teaches nothing
            labels["used"] = labels["budget"] - ties
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

    def upstream_metrics(self, stage: str) -> dict[str, Any]:
        """What upstream `stage` reported when it was trained, from its cache entry's
        `metrics.json`: its `eval/*` (a reward model's held-out `eval/accuracy`) and
        `train/pairs`, plus `entry`, the entry's name (which model it was). {} when the stage
        was not resolved for this run or came from a user's path without metrics."""
        import json

        if stage not in self.stages:
            return {}
        entry = self.stages[stage].parent
        try:
            metrics = json.loads((entry / "metrics.json").read_text())
        except (OSError, ValueError):
            return {}
        keep = {k: v for k, v in metrics.items() if k.startswith("eval/") or k == "train/pairs"}
        return {"entry": entry.name, **keep}

    def resolve_stages(self, stages: Sequence[str]) -> None:
        """Resolve each of `stages`: the user's explicit path, else the cache, where a miss
        trains the stage first (under the cache's lock, in the key's build dir, continuing
        an interrupted build of the same key from its last complete checkpoint)."""
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

        def build(work: Path) -> None:
            from rlhf_exp.runner import execute  # the runner runs stages; it imports us
            from rlhf_exp.training import has_complete_checkpoint

            # `work` is the key's stable build dir: an interrupted build of the same key left
            # its checkpoints there, and resuming one gives what an uninterrupted build gives.
            run = child
            if has_complete_checkpoint(work / "checkpoints"):
                log.warning("upstream %s: resuming its interrupted build in %s", stage, work)
                run = dataclasses.replace(child, resume_from="latest")
            elif any(p.name != OWNER_FILE for p in work.iterdir()):
                log.warning(
                    "upstream %s: an interrupted build in %s left no complete checkpoint; "
                    "starting it fresh",
                    stage,
                    work,
                )
                for p in work.iterdir():
                    if p.is_dir():
                        shutil.rmtree(p)
                    elif p.name != OWNER_FILE:
                        p.unlink()
            # Training the stage here (a cache miss) draws random numbers; without this, a
            # run's results would depend on whether its upstream stages were cached.
            with preserved_rng():
                execute(run, work, self.cache)
            # the optimiser states are not part of the stage's output
            shutil.rmtree(work / "checkpoints", ignore_errors=True)

        key = stage_key(child)
        try:
            return self.cache.get_or_build(stage, key, build, resumable=True) / "model"
        except UpstreamInterrupted as err:  # a stage further up: keep its message
            raise UpstreamInterrupted(self.run_dir, err.step, str(err)) from None
        except Interrupted as err:
            # The printed resume command is this run's own (its dir, resume_from=latest):
            # rerun, it resolves this stage again and the build continues from its checkpoint.
            where = self.cache.build_dir(stage, key) / "checkpoints"
            raise UpstreamInterrupted(
                self.run_dir,
                err.step,
                f"interrupted at step {err.step} while training upstream stage {stage!r}; "
                f"its checkpoint is kept in {where} and the same run resumes it",
            ) from None


class UpstreamInterrupted(Interrupted):
    """An upstream stage's training was stopped by a signal; `run_dir` is the dir of the run
    that needed it (the one to rerun), the message says where the stage's checkpoint is."""

    def __init__(self, run_dir: object, step: int, message: str) -> None:
        super().__init__(run_dir, step)
        self.args = (message,)


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


def stage_method_node(stage: str) -> Any:
    """`method=<stage>` as Hydra composes it (its group YAML, then what `optional local` and
    the config search path add), its `${dataset.*}` interpolations left unresolved.

    Inside a running app this is the app's own config loader (its search path, plugins'
    config dirs included); elsewhere (tests, scripts) `conf_dir()`, the packaged or the
    repo's `conf/`."""
    from hydra.core.global_hydra import GlobalHydra

    return copy.deepcopy(_composed_method(stage, GlobalHydra.instance().is_initialized()))


@functools.cache
def _composed_method(stage: str, in_app: bool) -> Any:
    """Composing takes ~0.3 s; a process composes each stage once (its search path is fixed)."""
    from hydra import compose, initialize_config_dir

    overrides = [f"method={stage}"]
    if in_app:
        cfg = compose(config_name="config", overrides=overrides)
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg.method, resolve=False)


def upstream_run(run: RunConfig, stage: str) -> RunConfig:
    """The config of upstream `stage` for `run`: same model, data and LoRA; its own method."""
    # The stage's YAML interpolates the dataset's keys (its token budget), so it is resolved
    # beside this run's dataset and model.
    node = OmegaConf.create(
        {
            "dataset": asdict(run.dataset),
            "model": asdict(run.model),
            "method": stage_method_node(stage),
        }
    )
    defaults = OmegaConf.to_container(node, resolve=True)["method"]
    overrides = getattr(run.upstream, stage).overrides
    spec = method_spec(stage, {**defaults, **overrides}, prefix=f"upstream.{stage}.overrides")
    # Never the run's own resume target: that is a checkpoint of the run, not of the stage
    # (an interrupted stage build is resumed by the cache, from the stage's own checkpoints).
    return dataclasses.replace(run, method=spec, seed=run.upstream.seed, resume_from=None)


def stage_key(run: RunConfig) -> dict[str, Any]:
    """Everything that decides a stage's output; the cache key of that output."""
    from rlhf_exp.data.loading import source_fingerprint, split_rule
    from rlhf_exp.methods import get_method

    upstream = {}
    for stage in get_method(run.method.name).needs_for(run):
        path = getattr(run.upstream, stage).path
        upstream[stage] = (
            {"path": str(Path(path).resolve())} if path else stage_key(upstream_run(run, stage))
        )
    from rlhf_exp.data.policy_pairs import LABEL_FIELDS

    dataset = asdict(run.dataset)
    if run.dataset.source == "files":  # their content below decides, not where they are
        del dataset["data_files"]
    if run.method.name == "sft":  # reads no preference labels: one SFT policy for every budget
        dataset = {k: v for k, v in dataset.items() if k not in LABEL_FIELDS}
    key = {
        "method": asdict(run.method),
        "model": asdict(run.model),
        "dataset": dataset,
        "data": source_fingerprint(run.dataset),  # a changed file changes the key
        "lora": asdict(run.lora),
        "seed": run.seed,
        "upstream": upstream,
    }
    rule = split_rule(run.dataset)
    if rule is not None:  # only where the rule decides rows: other datasets keep their keys
        key["split"] = rule
    return key


def discard_conversions(data: DatasetSpec, cache_root: Path) -> None:
    """Remove the `datasets` conversions of `data`'s files (`<cache>/hf_datasets/`) and their
    lock files: called when a run was rejected, so rejected data leaves nothing behind."""
    if data.source != "files" or not (Path(cache_root) / "hf_datasets").is_dir():
        return
    import datasets

    from rlhf_exp.config.data_files import file_format, resolve_data_files
    from rlhf_exp.data.loading import reader_options

    hf = Path(cache_root) / "hf_datasets"
    for split, value in data.data_files.items():
        try:
            key = f"dataset.data_files.{split}"
            files = resolve_data_files(key, value)
            builder = datasets.load_dataset_builder(  # the options name the conversion's dir
                file_format(files[0]),
                data_files=[str(p) for p in files],
                cache_dir=str(hf),
                **reader_options(files, key),
            )
        except Exception:  # the files the run was rejected for may not even parse
            log.debug("no conversion to discard for split %s", split, exc_info=True)
            continue
        target = Path(builder.cache_dir)  # hf_datasets/<format>/<config>/<version>/<hash>
        shutil.rmtree(target, ignore_errors=True)
        for lock in [*target.parent.glob(f"{target.name}*.lock"), *hf.glob(f"*{target.name}.lock")]:
            lock.unlink(missing_ok=True)
        for parent in (target.parent, target.parent.parent, target.parent.parent.parent):
            if parent != hf and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
    if not any(hf.iterdir()):
        hf.rmdir()


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
