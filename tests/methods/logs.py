"""Reading back what a run logged to TensorBoard."""

from __future__ import annotations

from pathlib import Path


def scalars(run_dir: Path) -> dict[str, list[float]]:
    """Every scalar the run logged to TensorBoard, by tag, one value per step in step order
    (the end-of-run summary re-logs the last step's values at the same step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    by_step = {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}
    return {tag: [v for _, v in sorted(steps.items())] for tag, steps in by_step.items()}
