"""What both peer runners report: one `RESULT {json}` line with the library versions they ran
(each runner may run in its own virtual environment, so the versions are read there)."""

from __future__ import annotations

import json
import time
from typing import Any


def timed_train(trainer: Any) -> float:
    """Wall seconds of `trainer.train()`: the loop the benchmark compares."""
    started = time.perf_counter()
    trainer.train()
    return time.perf_counter() - started


def print_result(fields: dict[str, Any]) -> None:
    import torch
    import transformers
    import trl

    versions = {
        "trl": trl.__version__,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }
    result = fields | {"torch_threads": torch.get_num_threads(), "versions": versions}
    print("RESULT " + json.dumps(result), flush=True)
