"""Installable like a library: the wheel carries the configs (`rlhf_exp/conf`, from the repo's
`conf/`) and the `rlhf-exp` console script, and runs from any directory without the repo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from setuptools import find_packages

from rlhf_exp.config import location
from tests.conftest import ROOT


def test_pyproject_lists_every_package():
    """pyproject.toml lists packages (to map `rlhf_exp.conf` to conf/): a new subpackage
    missing from the list would be missing from the wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = find_packages(str(ROOT), include=["rlhf_exp", "rlhf_exp.*"])
    assert sorted(listed) == sorted([*found, "rlhf_exp.conf"])


def test_conf_dir_prefers_the_packaged_configs(tmp_path: Path, monkeypatch):
    assert location.conf_dir() == ROOT / "conf"  # a checkout: the repo's conf/
    package = tmp_path / "site-packages" / "rlhf_exp"
    (package / "conf").mkdir(parents=True)
    monkeypatch.setattr(location, "_PACKAGE", package)
    assert location.conf_dir() == tmp_path / "site-packages" / "conf"  # no config.yaml in it
    (package / "conf" / "config.yaml").write_text("seed: 0\n")
    assert location.conf_dir() == package / "conf"


def _env() -> dict[str, str]:
    """This environment without what would import the checkout instead of the wheel."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for key in ("PYTHONPATH", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    return env


def _run(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args}: {result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repo(tmp_path: Path):
    # Built from a copy: the build writes build/ and *.egg-info beside its sources.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for name in ("rlhf_exp", "conf"):  # conf/local/: per machine, never shipped
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", src, "--no-deps", "-w", wheels], tmp_path)
    (wheel,) = wheels.glob("rlhf_exp-*.whl")

    # A fresh venv that sees this environment's packages (torch, trl, ...) without
    # reinstalling them. --system-site-packages alone would not when the tests themselves run
    # in a venv (CI): the .pth adds this environment's site-packages too, after the venv's own.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", venv], tmp_path)
    python, script = venv / "bin" / "python", venv / "bin" / "rlhf-exp"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path
        ).stdout.strip()
    )
    outer = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "outer_env.pth").write_text("\n".join(sorted(outer)) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel], tmp_path)

    work = tmp_path / "work"  # outside the repo: nothing there to import or compose from
    work.mkdir()
    code = "from rlhf_exp.config.location import conf_dir; print(conf_dir())"
    conf = Path(_run([python, "-c", code], work).stdout.strip())
    assert conf == (site / "rlhf_exp" / "conf").resolve(), conf  # the wheel's, not the repo's
    assert (conf / "method" / "sft.yaml").is_file() and not (conf / "local").exists()

    run = _run(
        [script, "method=sft", "debug=fast", "method.max_steps=2", f"paths.root_dir={work}"],
        work,
        timeout=600,
    )
    (run_dir,) = (work / "outputs" / "runs").glob("*/*")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "sft" and "status" not in metrics, run.stderr[-2000:]
    assert (run_dir / "run.log").is_file()  # the job name is `run` for either entry
    assert (run_dir / "model" / "model.safetensors").is_file()
    card = (run_dir / "model" / "README.md").read_text()
    assert "# sft policy (rlhf-exp)" in card and "| `eval/loss` |" in card
    assert not (run_dir / "checkpoints" / "README.md").exists()  # TRL's card is not written
