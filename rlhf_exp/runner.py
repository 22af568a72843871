"""One run, start to finish: validate, resolve upstream stages, dispatch, record, summarise.

`main(cfg)` is what `run.py` calls with the composed Hydra config. Everything a method needs
from the outside world comes through its `RunContext` (`context.py`): the run dir, the
artifact cache, the tracker, the starting model and the upstream stages it declared, which are
resolved here before the method starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from rlhf_exp.artifacts import ArtifactCache, atomic_write_text, copy_tree
from rlhf_exp.config.schema import RunConfig, check_paths, validate
from rlhf_exp.context import RunContext, stage_key
from rlhf_exp.distributed import is_main_process
from rlhf_exp.errors import Interrupted, UserError
from rlhf_exp.tracking import Tracker, summary_table

log = logging.getLogger(__name__)


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
        ctx.resolve_stages(method.needs_for(run))
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
