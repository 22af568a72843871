"""Where a run's numbers go: TensorBoard, `metrics.csv`, wandb, MLflow (the `logger` group),
`metrics.json`, and a one-screen summary.

Every run owns one `Tracker`, and every scalar of the run passes through it: our own loops
call `log_scalars`, trainer-backed methods pass `trainer_callbacks()` to their trainer. Those
hand the writer to transformers' `TensorBoardCallback` (which also records the trainer's args)
and the trainer's logs, named as there (`train/loss`, `eval/accuracy`, ...), to the other
backends. The trainers' own `report_to` stays "none": a second wandb or MLflow run per stage
would split one run's numbers in two. wandb and MLflow are optional packages and offline by
default (conf/logger/): nothing leaves the machine unless configured to.
"""

from __future__ import annotations

import csv
import importlib
import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_exp.artifacts import atomic_write_text
from rlhf_exp.errors import UserError
from rlhf_exp.memory import PeakMemory, memory_metrics

if TYPE_CHECKING:
    from rlhf_exp.config.schema import LoggerSpec, MlflowSpec, WandbSpec

log = logging.getLogger(__name__)


class Tracker:
    """`writes=False` (processes other than rank 0) keeps everything in memory."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        writes: bool = True,
        *,
        csv: bool = False,
        wandb: WandbSpec | None = None,
        mlflow: MlflowSpec | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.writes = writes
        self.tb_dir = self.run_dir / "tensorboard"
        # first: a missing package stops the run before anything else starts
        self._sinks = _open_sinks(self.run_dir, csv, wandb, mlflow) if writes else []
        self.started = time.perf_counter()
        self.memory = PeakMemory().start()
        self._writer = None
        if tensorboard and writes:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.tb_dir))

    @classmethod
    def from_spec(cls, run_dir: Path, logger: LoggerSpec, writes: bool = True) -> Tracker:
        """The tracker of a run whose `logger` group is `logger`."""
        return cls(
            run_dir,
            logger.tensorboard,
            writes,
            csv=logger.csv,
            wandb=logger.wandb,
            mlflow=logger.mlflow,
        )

    @property
    def writer(self) -> Any:
        """The `SummaryWriter` (None when TensorBoard is off)."""
        return self._writer

    def trainer_callbacks(self) -> list[Any]:
        """Callbacks that route a transformers/TRL trainer's logs into this run's backends."""
        callbacks: list[Any] = []
        if self._writer is not None:
            from transformers.integrations import TensorBoardCallback

            callbacks.append(TensorBoardCallback(tb_writer=self._writer))
        if self._sinks:
            callbacks.append(_sink_callback(self))
        return callbacks

    def log_scalars(self, metrics: dict[str, float], step: int) -> None:
        numbers = {k: v for k, v in metrics.items() if _is_number(v)}
        if self._writer is not None:
            for tag, value in numbers.items():
                self._writer.add_scalar(tag, value, step)
        self._to_sinks(numbers, step)

    def _to_sinks(self, metrics: dict[str, Any], step: int) -> None:
        numbers = {k: float(v) for k, v in metrics.items() if _is_number(v)}
        if numbers:
            for sink in self._sinks:
                sink.log(numbers, step)

    def log_text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def finish(
        self, metrics: dict[str, Any], step: int, hparams: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Log final metrics (and `hparams` for TensorBoard's HParams dashboard), write
        `metrics.json` atomically, close the writer."""
        metrics = {
            **metrics,
            "time/wall_s": round(self.elapsed(), 2),
            **memory_metrics(self.memory.stop()),
        }
        self.log_scalars({k: v for k, v in metrics.items() if "/" in k}, step)
        if hparams and self._writer is not None:
            numeric = {k: v for k, v in metrics.items() if _is_number(v) and "/" in k}
            # run_name="." keeps the hparams in this run's dir instead of a timestamped child
            self._writer.add_hparams(
                hparams, {f"hparam/{k}": v for k, v in numeric.items()}, run_name="."
            )
        for sink in self._sinks:
            sink.finish(hparams or {})
        if self.writes:
            write_metrics(self.run_dir, metrics)
        self.close()
        return metrics

    def close(self) -> None:
        self.memory.stop()
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()


# ------------------------------------------------------------------ csv, wandb, MLflow
class _Csv:
    """`<run dir>/metrics.csv`, one `step,key,value` row per scalar (long format: the keys
    differ from log to log). Appended to: a resumed run continues its file."""

    def __init__(self, path: Path) -> None:
        new = not path.is_file() or path.stat().st_size == 0
        self._file = path.open("a", newline="")
        self._rows = csv.writer(self._file, lineterminator="\n")
        if new:
            self._rows.writerow(["step", "key", "value"])

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._rows.writerows([step, key, value] for key, value in metrics.items())
        self._file.flush()  # readable while the run goes on

    def finish(self, hparams: dict[str, Any]) -> None:
        pass  # in config.yaml beside it

    def close(self) -> None:
        self._file.close()


class _Wandb:
    """A wandb run named after the run dir, its files under the run dir."""

    def __init__(self, spec: WandbSpec, run_dir: Path) -> None:
        wandb = _import_backend("wandb")
        self._run = wandb.init(
            project=spec.project,
            entity=spec.entity,
            mode=spec.mode,
            dir=str(run_dir),
            name=run_dir.name,
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self, hparams: dict[str, Any]) -> None:
        self._run.config.update(hparams)

    def close(self) -> None:
        self._run.finish()


class _Mlflow:
    """An MLflow run named after the run dir, through a client of its own (not mlflow's
    global active run: several runs of a multirun share a process)."""

    def __init__(self, spec: MlflowSpec, run_dir: Path) -> None:
        self._mlflow = _import_backend("mlflow")
        uri = spec.tracking_uri or (run_dir / "mlruns").absolute().as_uri()
        self._client = self._mlflow.MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(spec.experiment)
        experiment = (
            found.experiment_id if found else self._client.create_experiment(spec.experiment)
        )
        self._run_id = self._client.create_run(experiment, run_name=run_dir.name).info.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metric = self._mlflow.entities.Metric
        batch = [metric(key, value, now, step) for key, value in metrics.items()]
        self._client.log_batch(self._run_id, metrics=batch)

    def finish(self, hparams: dict[str, Any]) -> None:
        for key, value in hparams.items():
            self._client.log_param(self._run_id, key, value)

    def close(self) -> None:
        self._client.set_terminated(self._run_id)


def _import_backend(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise UserError(
            f"logger={name} needs the {name} package, which is not installed: pip install {name}"
        ) from None


def _open_sinks(
    run_dir: Path, csv: bool, wandb: WandbSpec | None, mlflow: MlflowSpec | None
) -> list[Any]:
    sinks: list[Any] = []
    try:
        if csv:
            sinks.append(_Csv(run_dir / "metrics.csv"))
        if wandb is not None:
            sinks.append(_Wandb(wandb, run_dir))
        if mlflow is not None:
            sinks.append(_Mlflow(mlflow, run_dir))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def _sink_callback(tracker: Tracker) -> Any:
    """A trainer callback that hands the trainer's logs to `tracker`'s csv/wandb/MLflow."""
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs

    class ToSinks(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if state.is_world_process_zero and logs:
                # the names TensorBoardCallback gives them: loss -> train/loss, eval_x -> eval/x
                tracker._to_sinks(rewrite_logs(logs), state.global_step)

    return ToSinks()


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """`metrics.json` in `run_dir`, written atomically (a reader never sees half of it)."""
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def summary_table(title: str, metrics: dict[str, Any]) -> str:
    """A plain-text two-column table of `metrics`, for the end of a run.

    The data report (`data/*`) is left out: it was logged split by split when the data was
    prepared, and stays in metrics.json; the rows trained and scored on show as
    `train/pairs`, `train/rows` and `eval/pairs`.
    """
    rows = [
        (k, _fmt(v))
        for k, v in metrics.items()
        if not isinstance(v, (dict, list)) and not k.startswith("data/")
    ]
    width = max([len(k) for k, _ in rows] + [len(title)])
    value_width = max([len(v) for _, v in rows] + [5])
    rule = "-" * (width + value_width + 3)
    lines = [rule, title, rule, *(f"{k:<{width}}   {v:>{value_width}}" for k, v in rows), rule]
    return "\n".join(lines)
