"""One run, start to finish: validate, resolve upstream stages, dispatch, record, summarise.

`main(cfg)` is what `run.py` calls with the composed Hydra config. Everything a method needs
from the outside world comes through its `RunContext`: the run dir, the artifact cache, the
tracker, the starting model and the outputs of upstream stages.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_exp.artifacts import ArtifactCache, atomic_write_text, copy_tree
from rlhf_exp.config.schema import DatasetSpec, RunConfig, check_paths, method_spec, validate
from rlhf_exp.distributed import is_main_process, world_size
from rlhf_exp.errors import Interrupted, UserError
from rlhf_exp.tracking import Tracker, summary_table

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
        """Model dir of an upstream stage: the user's explicit path, else the cache."""
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
    for stage in get_method(run.method.name).needs:
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


def execute(run: RunConfig, run_dir: Path, cache: ArtifactCache) -> dict[str, Any]:
    """Run `run.method` in `run_dir`; returns its final metrics (also in `metrics.json`)."""
    from transformers import set_seed

    from rlhf_exp.methods import get_method

    method = get_method(run.method.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: starting in %s", run.method.name, run_dir)
    set_seed(run.seed)
    tracker = Tracker(run_dir, run.logger.tensorboard, writes=is_main_process())
    ctx = RunContext(run, run_dir, cache, tracker)
    try:
        metrics = {
            "method": run.method.name,
            **method.run(run, ctx),
            "model/precision": run.model.precision,  # what `auto` became on this machine
            **{
                f"data/{split}/{name}": value
                for split, stats in ctx.data_report.items()
                for name, value in stats.items()
            },
        }
        hparams: dict[str, Any] = {"method": run.method.name, "seed": run.seed}
        knob = type(run.method).KL_KNOB
        if knob is not None:
            hparams[knob] = getattr(run.method, knob)
            metrics["knob"] = f"{knob}={hparams[knob]}"
        step = int(metrics.get("train/global_step", 0))
        return ctx.tracker.finish(metrics, step, hparams)
    finally:
        ctx.tracker.close()


def main(cfg: DictConfig) -> float | None:
    """Entry point for `run.py`.

    A user error is one line on stderr and exit code 2; any failure is recorded in the run's
    `metrics.json` as `status: failed` with its error line. In a multirun the failing job only
    logs and returns, so the other jobs still run and the report lists it as failed.
    """
    multirun = _in_multirun()
    try:
        run = validate(cfg)
        check_paths(run)
        from rlhf_exp.methods import get_method

        method = get_method(run.method.name)
        run_dir = Path(run.paths.output_dir)
        config_text = OmegaConf.to_yaml(
            {k: v for k, v in cfg.items() if k != "hydra"}, resolve=True
        )
        if multirun:  # a re-run of a sweep in the same sweep dir
            state = _previous_attempt(run_dir, config_text)
            if state == "finished":
                log.info("%s: finished before with this config; skipped", run_dir)
                return json.loads((run_dir / "metrics.json").read_text()).get("objective")
            if state == "resumable" and run.resume_from is None:
                log.info("%s: interrupted before; resuming from its latest checkpoint", run_dir)
                run = dataclasses.replace(run, resume_from="latest")
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            atomic_write_text(run_dir / "config.yaml", config_text)
        cache = ArtifactCache(Path(run.paths.cache_dir))
        metrics = execute(run, run_dir, cache)
        if method.produces_model and is_main_process():
            _publish(cache, run, run_dir)
    except Interrupted as err:
        _record_failure(cfg, f"interrupted at step {err.step}")
        how = _resume_command(err.run_dir)
        if multirun:
            log.error("%s; resume with: %s", err, how)
            return None
        print(f"{err}\nresume with: {how}", file=sys.stderr)
        sys.exit(130)
    except Exception as err:
        line = f"error: {err}" if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        _record_failure(cfg, line.splitlines()[0] if line.strip() else type(err).__name__)
        if multirun:
            log.error("%s", line, exc_info=not isinstance(err, UserError))
            return None
        if isinstance(err, UserError):
            print(line, file=sys.stderr)
            sys.exit(2)
        raise
    log.info("\n%s", summary_table(f"{run.method.name} finished: {run_dir}", metrics))
    return metrics.get("objective")


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


def _previous_attempt(run_dir: Path, config_text: str) -> str | None:
    """ "finished" or "resumable" when `run_dir` holds an earlier run of the same config
    (`resume_from` aside), else None."""
    from rlhf_exp.training import has_complete_checkpoint

    def same(text: str) -> bool:
        strip = [ln for ln in text.splitlines() if not ln.startswith("resume_from:")]
        return strip == [ln for ln in config_text.splitlines() if not ln.startswith("resume_from:")]

    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config_file.is_file() or not same(config_file.read_text()):
        return None
    if metrics_file.is_file() and json.loads(metrics_file.read_text()).get("status") != "failed":
        return "finished"
    return "resumable" if has_complete_checkpoint(run_dir / "checkpoints") else None


def _resume_command(run_dir: object) -> str:
    from hydra.core.hydra_config import HydraConfig

    overrides = []
    if HydraConfig.initialized():
        overrides = [
            o for o in HydraConfig.get().overrides.task if not o.startswith("resume_from=")
        ]
    return " ".join(["python run.py", *overrides, f"hydra.run.dir={run_dir}", "resume_from=latest"])


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _record_failure(cfg: DictConfig, error: str) -> None:
    """`metrics.json` with `status: failed`, when the run dir is known; never raises."""
    if not is_main_process():
        return
    try:
        run_dir = Path(cfg.paths.output_dir)
        method = OmegaConf.select(cfg, "method.name", default="?")
        failure = {"method": method, "status": "failed", "error": error}
        atomic_write_text(run_dir / "metrics.json", json.dumps(failure, indent=2) + "\n")
    except Exception:  # the failure being reported matters more than this record of it
        log.debug("could not record the failure in metrics.json", exc_info=True)


def _publish(cache: ArtifactCache, run: RunConfig, run_dir: Path) -> None:
    """Store the run's model in the cache so later runs that need this stage reuse it."""

    def build(tmp: Path) -> None:
        copy_tree(run_dir / "model", tmp / "model")
        shutil.copy2(run_dir / "metrics.json", tmp / "metrics.json")

    cache.get_or_build(run.method.name, stage_key(run), build)
