"""A method added from outside the package: a module named in `plugins` registers it (with its
schema), a config dir on Hydra's search path gives its YAML, and run.py runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

TOY_METHOD = """
from dataclasses import dataclass

from rlhf_exp.config.schema import TrainSpec
from rlhf_exp.methods import register


@dataclass
class ToySpec(TrainSpec):
    name: str = "toy"
    factor: float = 1.0


@register("toy", produces_model=False)
def run(cfg, ctx):
    return {"toy/answer": cfg.method.factor * 21, "toy/run_dir": str(ctx.run_dir)}
"""


def test_a_toy_method_from_a_temporary_module_runs_through_run_py(tmp_path: Path):
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "toy_method.py").write_text(TOY_METHOD)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "toy.yaml").write_text("name: toy\nfactor: 2.0\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'plugin'}{os.pathsep}{ROOT}"}
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "plugins=[toy_method]",
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "method=toy",
        f"paths.root_dir={tmp_path}",
        f"hydra.run.dir={run_dir}",
    ]
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "toy" and metrics["toy/answer"] == 42.0
    bad = subprocess.run(
        [*args[:2], "plugins=[no_such_plugin]", "method=sft", f"paths.root_dir={tmp_path}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("error: plugins='no_such_plugin' is invalid")
