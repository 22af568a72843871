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
import os
import shlex
import shutil
import signal
import socket
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import DictConfig, OmegaConf

from rlhf_exp import signals
from rlhf_exp.artifacts import (
    ArtifactCache,
    atomic_write_text,
    copy_tree,
    entry_lock,
    reporting_disk_full,
)
from rlhf_exp.config.schema import RunConfig, check_paths, validate
from rlhf_exp.context import (
    DATA_KINDS,
    RunContext,
    UpstreamInterrupted,
    discard_conversions,
    stage_key,
)
from rlhf_exp.distributed import distributed_type, is_main_process, world_size
from rlhf_exp.errors import ConfigError, Interrupted, UserError
from rlhf_exp.objective import ObjectiveMissing, objective_value
from rlhf_exp.tracking import Tracker, summary_table, write_metrics

log = logging.getLogger(__name__)


@signals.phase("setup")  # until training; saving and evaluation name their own phases
def execute(run: RunConfig, run_dir: Path, cache: ArtifactCache) -> dict[str, Any]:
    """Run `run.method` in `run_dir`; returns its final metrics (also in `metrics.json`)."""
    import torch
    from transformers import set_seed

    from rlhf_exp.methods import get_method

    method = get_method(run.method.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    log.info("%s: starting in %s", run.method.name, run_dir)
    set_seed(run.seed)
    tracker = Tracker.from_spec(run_dir, run.logger, writes=is_main_process())
    ctx = RunContext(run, run_dir, cache, tracker)
    stored = len(cache.stored)
    try:
        from rlhf_exp.data.checks import check_trainable

        # data that cannot train: refused before any stage trains
        check_trainable(run, ctx, needs=lambda r: get_method(r.method.name).needs_for(r))
        ctx.resolve_stages(method.needs_for(run))
        with reporting_disk_full(run_dir):  # a full disk: one line, not torch's message
            trained = method.run(run, ctx)
        ran = distributed_type()  # what accelerate made of the launch
        for asked in ("FSDP", "DEEPSPEED"):
            if os.environ.get(f"ACCELERATE_USE_{asked}") == "true" and ran != asked:
                # accelerate applies FSDP on accelerators only; a loop of our own could drop it
                log.warning("a %s launch ran %s: not sharded", asked, ran)
        metrics = {
            "method": run.method.name,
            **trained,
            "model/precision": run.model.precision,  # what `auto` became on this machine
            "model/dtype": run.model.dtype,  # of the weights
            "run/processes": world_size(),
            "run/distributed": ran,
            "run/threads": torch.get_num_threads(),  # per process
            **{
                f"data/{split}/{name}": value
                for split, stats in ctx.data_report.items()
                for name, value in stats.items()
            },
        }
        hparams = run_hparams(run)
        knob = type(run.method).KL_KNOB
        if knob is not None:
            metrics["knob"] = f"{knob}={hparams[knob]}"
        step = int(metrics.get("train/global_step", 0))
        with signals.phase("saving", deferred=True), reporting_disk_full(run_dir):
            metrics = ctx.tracker.finish(metrics, step, hparams)
    except UserError:  # rejected: what was built from its data is not kept in the cache
        cache.discard(cache.stored[stored:], DATA_KINDS)
        discard_conversions(run.dataset, cache.root)
        raise
    finally:
        ctx.tracker.close()
    return metrics


def run_hparams(run: RunConfig) -> dict[str, Any]:
    """What TensorBoard's HParams table shows for this run: method, seed and every method's
    KL knob (`beta`, `kl_coef`, `n`, ...), NaN where this method has no such knob. Every run
    logs the same columns, so a sweep's table has them all, whichever run TensorBoard reads
    first (it takes the columns from one run)."""
    from rlhf_exp.config.schema import _method_specs

    knobs = sorted({s.KL_KNOB for s in _method_specs().values() if s.KL_KNOB is not None})
    hparams: dict[str, Any] = {"method": run.method.name, "seed": run.seed}
    hparams |= {k: float("nan") for k in knobs}
    own = type(run.method).KL_KNOB
    if own is not None:
        hparams[own] = getattr(run.method, own)
    return hparams


def _with_objective(run: RunConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """`metrics` plus `objective` (read from any key, `time/wall_s` too), rewritten to
    metrics.json. One that cannot be computed fails the run for a sweeper, keeping its results."""
    if run.objective.metric is None:
        return metrics
    try:
        metrics = {**metrics, "objective": objective_value(run.objective, metrics)}
    except ObjectiveMissing as err:
        metrics = {**metrics, "status": "failed", "error": f"error: {err}"}
        raise
    finally:
        if is_main_process():
            write_metrics(Path(run.paths.output_dir), metrics)
    return metrics


def main(cfg: DictConfig) -> float | None:
    """Entry point for `run.py`.

    A user error is one line on stderr and exit code 2; any failure is recorded in the run's
    `metrics.json` as `status: failed` with its error line. In a multirun the failing job only
    logs and returns, so the other jobs still run and the report lists it as failed.

    SIGINT/SIGTERM, in any phase of the run, stop it at that phase's safe point
    (`rlhf_exp.signals`): `metrics.json` says `status: interrupted` with the phase and step,
    stderr gets one line and a command that resumes it, and the process exits 130 (SIGINT) or
    143 (SIGTERM). In a multirun the sweep stops with it: no further job starts, the report
    is written, and the printed command (the same sweep in the same sweep dir) continues it.
    """
    attempt = _Attempt()
    with signals.handling() as guard:
        try:
            return _main(cfg, attempt)
        except (Interrupted, signals.Stop) as stop:
            guard.exiting()  # from here a further signal ends the process at once
            _stopped(cfg, attempt, stop, guard)
        finally:
            if attempt.marker is not None:
                attempt.marker.unlink(missing_ok=True)
            attempt.held.close()


@dataclasses.dataclass
class _Attempt:
    """How far `main` got, for the report of a stop."""

    run: RunConfig | None = None  # validated
    finished: bool = False  # metrics.json holds this run's results
    claimed: bool = False  # the run dir is this run's (claim_run_dir passed)
    marker: Path | None = None  # RUNNING_MARKER written by this process
    held: ExitStack = dataclasses.field(default_factory=ExitStack)  # the run dir's lock


@signals.phase("setup")
def _main(cfg: DictConfig, attempt: _Attempt) -> float | None:
    multirun = _in_multirun()
    try:
        run = attempt.run = validate(cfg)
        check_paths(run)
        run_dir = Path(run.paths.output_dir)
        config_text = OmegaConf.to_yaml(
            {k: v for k, v in cfg.items() if k != "hydra"}, resolve=True
        )
        data_text = _data_text(run)
        if is_main_process():
            attempt.held.enter_context(hold_run_dir(run_dir))
        if multirun:  # a re-run of a sweep in the same sweep dir
            state = _previous_attempt(run_dir, config_text, data_text)
            if state == "finished":
                log.info("%s: finished before with this config; skipped", run_dir)
                return json.loads((run_dir / "metrics.json").read_text()).get("objective")
            if state == "resumable" and run.resume_from is None:
                log.info("%s: interrupted before; resuming from its latest checkpoint", run_dir)
                run = dataclasses.replace(run, resume_from="latest")
        if is_main_process():
            claim_run_dir(run_dir, config_text, run.overwrite, data_text)
        attempt.claimed = True
        run_dir.mkdir(parents=True, exist_ok=True)
        if is_main_process():
            atomic_write_text(run_dir / "config.yaml", config_text)
            atomic_write_text(run_dir / DATA_FILE, data_text)
            attempt.marker = _mark_running(run_dir)
        _set_threads(run.threads)
        from rlhf_exp.methods import get_method  # imports torch, transformers, trl: seconds

        method = get_method(run.method.name)
        if run.hub.push and not method.produces_model:
            raise ConfigError("hub.push", True, f"method={method.name} saves no model to push")
        cache = ArtifactCache(Path(run.paths.cache_dir))
        metrics = execute(run, run_dir, cache)
        # the sweeper's number: of this run, never of the upstream stages `execute` also runs
        with signals.phase("saving", deferred=True), reporting_disk_full(run_dir):
            metrics = _with_objective(run, metrics)
        attempt.finished = True
        if method.produces_model and is_main_process():
            with signals.phase("saving", deferred=True):
                _publish(cache, run, run_dir)
    except Interrupted:  # not a failure: `main` reports it
        raise
    except Exception as err:
        if (stop := signals.masked_stop(err)) is not None:  # cleanup failed while stopping
            raise stop from err
        line = f"error: {err}" if isinstance(err, UserError) else f"{type(err).__name__}: {err}"
        if _records_failure(cfg, attempt, err, multirun):
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


def _records_failure(cfg: DictConfig, attempt: _Attempt, err: Exception, multirun: bool) -> bool:
    """Whether a failed run writes its failure into its run dir's metrics.json."""
    if isinstance(err, DataChanged):  # in a sweep, the job's result there is of data now gone:
        return multirun  # the report must not show it as this sweep's
    if isinstance(err, (RunDirInUse, ObjectiveMissing)):  # another run's dir; or it holds
        return False  # this run's results and the error already
    # A run refused before it claimed its dir (a bad value, a mistyped resume command) leaves
    # the run there, finished or interrupted, as it was.
    try:
        return attempt.claimed or not _run_files(Path(cfg.paths.output_dir))
    except Exception:  # no run dir to speak of
        return False


def _previous_attempt(run_dir: Path, config_text: str, data_text: str) -> str | None:
    """ "finished" or "resumable" when `run_dir` holds an earlier run of the same config
    (`resume_from` aside) on the same data, else None: also for a run that failed, or that
    was interrupted before its first checkpoint (it starts again in its dir)."""
    from rlhf_exp.training import has_complete_checkpoint

    config_file, metrics_file = run_dir / "config.yaml", run_dir / "metrics.json"
    if not config_file.is_file() or not _same_run(config_file.read_text(), config_text):
        return None
    if _changed_data(run_dir, data_text):
        return None
    if metrics_file.is_file() and "status" not in json.loads(metrics_file.read_text()):
        return "finished"  # a finished run's metrics have no status (failed, interrupted)
    return "resumable" if has_complete_checkpoint(run_dir / "checkpoints") else None


class RunDirInUse(UserError):
    """The run dir holds another run's files, or another process runs in it."""


class DataChanged(RunDirInUse):
    """The run dir holds this config's run on data whose files have changed since."""


RUN_LOCK = ".run.lock"  # held by the process running in the dir; removed on release
# Beside config.yaml: the content of the run's data files (`source_fingerprint`), which the
# config names only by path. A file edited in place makes the dir another run's.
DATA_FILE = "data.json"


def _data_text(run: RunConfig) -> str:
    from rlhf_exp.data.loading import source_fingerprint

    return json.dumps(source_fingerprint(run.dataset), indent=2, sort_keys=True) + "\n"


def _changed_data(run_dir: Path, data_text: str) -> list[str]:
    """The data splits whose files differ from those the run in `run_dir` used, e.g.
    `["dataset.data_files.preference"]`; none for a dir written before data.json existed.
    (Only files can differ under one config: a hub dataset's fingerprint is its config.)"""
    try:
        then = json.loads((run_dir / DATA_FILE).read_text())
    except (OSError, ValueError):
        return []
    now = json.loads(data_text)
    splits = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    return [f"dataset.data_files.{k}" for k in splits]


# What Hydra itself writes into the run dir before the run starts, and the lock: never
# another run's files.
_HYDRA_FILES = (".hydra", RUN_LOCK)


def hold_run_dir(run_dir: Path) -> ExitStack:
    """Lock `run_dir` for this process until the returned stack is closed (or the process
    dies), or raise `RunDirInUse` if another process (or another run in this one) holds it.

    Two runs of one config started in the same second share the default run dir, and
    `claim_run_dir` takes the same config as this run's own; a resume started while the run
    still goes is the same case. Without the lock both would write one dir's checkpoints.
    """
    from rlhf_exp.compare import RUNNING_MARKER, running_owner

    run_dir.mkdir(parents=True, exist_ok=True)
    stack = ExitStack()
    try:
        stack.enter_context(entry_lock(run_dir / RUN_LOCK, wait=False))
    except BlockingIOError:
        alive, where = running_owner(run_dir / RUNNING_MARKER)
        who = f" ({where})" if alive else ""
        raise RunDirInUse(
            f"run dir {run_dir} is in use by a run still going{who}; wait for it to end, "
            "or choose another hydra.run.dir"
        ) from None
    return stack


def _same_run(text: str, other: str) -> bool:
    """Whether two config.yaml texts are the same run: every key both have holds the same
    value, `resume_from`, `overwrite`, `threads` and `hub.*` aside (how an attempt runs or is
    published, not what it computes). A key only one has is a key added or removed by a code
    update, not another run."""

    def flat(node: Any, key: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {key: node}
        return {k: v for name, sub in node.items() for k, v in flat(sub, f"{key}.{name}").items()}

    try:
        mine, theirs = (flat(OmegaConf.to_container(OmegaConf.create(t))) for t in (text, other))
    except Exception:  # not a config we can read: not this run's
        return False
    # publishing (hub.*) is what happens after the run, not what it computes
    ignored = {".resume_from", ".overwrite", ".threads"}
    common = {
        k for k in mine.keys() & theirs.keys() if k not in ignored and not k.startswith(".hub.")
    }
    return ".method.name" in common and all(mine[k] == theirs[k] for k in common)


def claim_run_dir(
    run_dir: Path, config_text: str, overwrite: bool, data_text: str | None = None
) -> None:
    """Refuse a run dir that holds another run's files (a different or no config.yaml, or the
    same config trained on data whose files have changed since): rotating checkpoints there
    would delete that run's, a resume would continue its weights on other data, and its files
    would mix with this run's. `overwrite=true` empties it first. The same config
    (resume_from aside) on the same data is this run's own dir: a resume, or a rerun that
    replaces its files."""
    found = _run_files(run_dir)
    if not found:
        return
    config = run_dir / "config.yaml"
    if not config.is_file():  # not a run's dir: never emptied, whatever overwrite says
        raise RunDirInUse(
            f"run dir {run_dir} holds files of something else (no config.yaml); choose another "
            "hydra.run.dir"
        )
    same_config = _same_run(config.read_text(), config_text)
    changed = _changed_data(run_dir, data_text) if same_config and data_text else []
    if same_config and not changed:
        return
    if not overwrite:
        if changed:
            what = f"this config's run on other data ({', '.join(changed)} changed since)"
        else:
            what = "a run with another config"
        error = DataChanged if changed else RunDirInUse
        raise error(
            f"run dir {run_dir} holds {what}; choose another hydra.run.dir, or pass "
            "overwrite=true to delete its contents"
        )
    log.warning("overwrite=true: deleting the contents of %s", run_dir)
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()


def _run_files(run_dir: Path) -> list[Path]:
    """What `run_dir` holds beyond Hydra's own files, the lock and log files: a run's files."""
    if not run_dir.is_dir():
        return []
    return [
        p for p in run_dir.iterdir() if p.name not in _HYDRA_FILES and not p.name.endswith(".log")
    ]


def _stopped(cfg: DictConfig, attempt: _Attempt, stop: BaseException, guard: Any) -> NoReturn:
    """Record and report a run stopped by a signal (`Interrupted` after its checkpoint, or
    `signals.Stop` anywhere else), then exit 128 + the signal's number. In a multirun the
    sweep stops too: its report is written and the process exits, so no further job starts.

    `metrics.json` is written only in a run dir this run has claimed (a stop while the config
    was validated leaves the dir as it was: it may hold another run's files).
    """
    signum = guard.signum or getattr(stop, "signum", None) or signal.SIGINT
    name = signals.signal_name(signum)
    run_dir = Path(cfg.paths.output_dir)
    if isinstance(stop, UpstreamInterrupted):  # an upstream stage's build, kept to resume
        where, phase = Path(str(stop.run_dir)), "upstream"
        step, line = _checkpoint_step(where), f"{name}: {stop}"
    elif isinstance(stop, Interrupted):  # training stopped after this step's checkpoint
        where, phase, step = Path(str(stop.run_dir)), "training", stop.step
        line = f"interrupted by {name} during training at step {step}; checkpoint saved"
    else:
        where, phase = run_dir, guard.phase or stop.phase
        step = _checkpoint_step(where)
        how = "stopped at once by a second " if stop.forced else "interrupted by "
        saved = "no checkpoint yet" if step is None else f"latest checkpoint: step {step}"
        during = "before it started" if phase == "idle" else f"during {phase}"
        line = f"{how}{name} {during} ({saved})"
    multirun = _in_multirun()
    if multirun:
        command = _command(_user_args("hydra.sweep.dir="), [f"hydra.sweep.dir={run_dir.parent}"])
    else:
        command = _resume_command(where, checkpoint=_checkpoint_step(where) is not None)
    if attempt.finished:  # the signal came while the finished run was being stored
        line = f"{name} received as the run finished; its results are in {run_dir}"
    elif attempt.marker is not None:
        _record_interrupt(cfg, attempt.run, line, name, phase, step, command)
    if attempt.marker is not None:  # not running any more, also for the report below
        attempt.marker.unlink(missing_ok=True)
    if not multirun:
        print(line if attempt.finished else f"{line}\nresume with: {command}", file=sys.stderr)
        signals.exit_process(signals.exit_code(signum))
    if attempt.marker is None:  # stopped before it started: leave no job behind
        _discard_unstarted(run_dir)
    report = _sweep_report(run_dir.parent, f"{name} during job `{run_dir.name}`")
    print(
        f"{run_dir.name}: {line}\nsweep stopped: no further job starts; report: {report}\n"
        f"continue with: {command}",
        file=sys.stderr,
    )
    signals.exit_process(signals.exit_code(signum))


def _discard_unstarted(job_dir: Path) -> None:
    """Remove a sweep job's dir that holds only what Hydra wrote before the job started
    (`.hydra/`, empty logs): a job stopped before it began is not one of the sweep's runs."""
    try:
        contents = list(job_dir.iterdir())
        if all(
            p.name == ".hydra" or (p.suffix == ".log" and not p.stat().st_size) for p in contents
        ):
            shutil.rmtree(job_dir)
    except OSError:
        log.debug("could not remove %s", job_dir, exc_info=True)


def _set_threads(requested: int | None) -> None:
    import torch

    # null: torch's default, which follows OMP_NUM_THREADS (joblib's workers get cores / n_jobs)
    if requested is not None:
        torch.set_num_threads(requested)
    log.info("torch runs on %d CPU thread(s)", torch.get_num_threads())


def _checkpoint_step(run_dir: Path) -> int | None:
    """Step of the newest complete checkpoint in `run_dir` (trainer `checkpoint-N`, PPO
    `step-N`; complete = has training.CHECKPOINT_COMPLETE), None without one."""
    steps = [
        int(p.parent.name.rsplit("-", 1)[-1])
        for p in Path(run_dir).glob("checkpoints/*-*/COMPLETE")
        if p.parent.name.rsplit("-", 1)[-1].isdigit()
    ]
    return max(steps, default=None)


# Overrides a resume or a sweep's continuation must not repeat: where to run, how to start.
_NOT_REPEATED = ("hydra.run.dir=", "hydra.sweep.dir=", "resume_from=", "overwrite=")


def _user_args(*drop: str) -> list[str]:
    """This process's command-line arguments (hydra flags and overrides), without those
    starting with `drop` (with or without a +/++/~ prefix)."""
    from hydra.core.hydra_config import HydraConfig

    if _entry() is not None:
        args = sys.argv[1:]
    elif HydraConfig.initialized():  # called without run.py's command line (a test)
        args = list(HydraConfig.get().overrides.task)
    else:
        args = []
    return [a for a in args if not a.lstrip("+~").startswith(drop)]


def _entry() -> list[str] | None:
    """How the user started us: `python run.py` or the `rlhf-exp` console script (None:
    from elsewhere, e.g. a test calling `main`)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "rlhf-exp":
        return ["rlhf-exp"]
    if not argv0.endswith(".py"):
        return None
    if os.path.isabs(argv0) and not os.path.relpath(argv0).startswith(".."):
        argv0 = os.path.relpath(argv0)  # the command runs from the same working dir
    return ["python", argv0]


def _command(args: list[str], extra: list[str]) -> str:
    """A shell command that runs this entry (as the user invoked it) with `args`."""
    return shlex.join([*(_entry() or ["python", "run.py"]), *args, *extra])


def _resume_command(run_dir: Path, checkpoint: bool) -> str:
    """The user's command in `run_dir`: from its latest checkpoint when it has one, else
    again from the start (the user's own `resume_from`, if any, kept)."""
    if not checkpoint:
        args = _user_args("hydra.run.dir=", "overwrite=")
        return _command(args, [f"hydra.run.dir={run_dir}"])
    return _command(_user_args(*_NOT_REPEATED), [f"hydra.run.dir={run_dir}", "resume_from=latest"])


def _record_interrupt(
    cfg: DictConfig,
    run: RunConfig | None,
    line: str,
    signal_name: str,
    phase: str,
    step: int | None,
    command: str,
) -> None:
    """`metrics.json` with `status: interrupted`, what stopped where, and how to go on."""
    if not is_main_process():
        return
    record: dict[str, Any] = {"method": OmegaConf.select(cfg, "method.name", default="?")}
    knob = type(run.method).KL_KNOB if run is not None else None
    if knob is not None:
        record["knob"] = f"{knob}={getattr(run.method, knob)}"
    record |= {
        "status": "interrupted",
        "signal": signal_name,
        "phase": phase,
        "step": step,
        "message": line,
        "resume": command,
    }
    try:
        path = Path(cfg.paths.output_dir) / "metrics.json"
        atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    except Exception:  # the stop being reported matters more than this record of it
        log.debug("could not record the interrupt in metrics.json", exc_info=True)


def _sweep_report(sweep_dir: Path, interrupted: str) -> Path | str:
    """The sweep's comparison report, written now that the sweep stops; never raises."""
    from rlhf_exp.compare import build_report

    try:
        return build_report(sweep_dir, interrupted=interrupted)
    except Exception as err:  # a report that cannot be built must not hide the stop
        return f"not written ({type(err).__name__}: {err})"


def _mark_running(run_dir: Path) -> Path:
    """Write the RUNNING marker that `rlhf-compare` reads (which process runs the job)."""
    from rlhf_exp.compare import RUNNING_MARKER

    marker = run_dir / RUNNING_MARKER
    atomic_write_text(marker, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return marker


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
    """Give the run's model its card, store it in the cache so later runs that need this
    stage reuse it, and push it to the hub when `hub.push` opts in."""
    from rlhf_exp.methods import get_method
    from rlhf_exp.model_card import write_model_card

    metrics = json.loads((run_dir / "metrics.json").read_text())
    # before the cache copies the dir (it hard-links files): the entry gets the same card
    write_model_card(run_dir / "model", run, metrics, get_method(run.method.name).needs_for(run))

    def build(tmp: Path) -> None:
        copy_tree(run_dir / "model", tmp / "model")
        shutil.copy2(run_dir / "metrics.json", tmp / "metrics.json")

    cache.get_or_build(run.method.name, stage_key(run), build)
    if run.hub.push:
        from rlhf_exp.hub import push_model_dir

        push_model_dir(run_dir / "model", run.hub, f"rlhf-exp: method={run.method.name}")
