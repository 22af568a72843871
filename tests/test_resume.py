"""Interrupt and resume for trainer-backed methods, through the real CLI in subprocesses."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlhf_exp.errors import UserError
from rlhf_exp.methods.ppo import checkpoint as ppo_checkpoint
from rlhf_exp.training import CHECKPOINT_COMPLETE, latest_checkpoint, resume_checkpoint
from tests.cli_fork import start_cli
from tests.conftest import run_cli

ARGS = [
    "method=sft",
    "debug=fast",
    "method.max_steps=24",
    "method.save_steps=4",
    "method.eval_steps=100",
]
# Per method: its arguments, and the metrics a resumed run must reproduce (rel. tolerance).
# Losses (train/loss over every step, the resumed run's included) and accuracies are exact
# up to float noise; sampled metrics (gold reward) can move a little when a last-digit
# difference in the weights flips one sampled token.
METHODS = {
    "sft": (ARGS, {"eval/loss": 1e-4, "train/loss": 1e-4, "train/global_step": 0}),
    "reward": (
        ["method=reward", "debug=fast", "method.max_steps=24", "method.save_steps=4"],
        {"eval/loss": 1e-4, "eval/accuracy": 1e-4, "train/loss": 1e-4, "train/global_step": 0},
    ),
    "dpo": (
        [
            "method=dpo",
            "debug=fast",
            "method.max_steps=16",
            "method.save_steps=4",
            "dataset.n_eval_prompts=16",
            "eval.reward_model=false",  # no reward model to train for the evaluation
            # precomputing scores all 2,850 pairs in each of the three runs (test_determinism
            # covers that path); the frozen reference copy is resumed the same way
            "method.precompute_ref_log_probs=false",
        ],
        {
            "eval/loss": 1e-4,
            "eval/rewards_accuracies": 1e-4,
            "train/loss": 1e-4,
            "train/global_step": 0,
        },
    ),
    "ppo": (
        [
            "method=ppo",
            "debug=fast",
            "method.max_steps=6",
            "method.save_steps=1",
            "method.rollout_batch_size=32",
            "dataset.n_eval_prompts=16",
        ],
        {"objective/scores": 1e-4, "val/vf_loss": 1e-3, "train/global_step": 0},
    ),
}


def _complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of any method (trainer `checkpoint-N`, PPO `step-N`), by step."""
    found = [
        p for p in (run_dir / "checkpoints").glob("*-*") if (p / CHECKPOINT_COMPLETE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]))


def test_latest_checkpoint_ignores_incomplete_ones(tmp_path: Path):
    for step, complete in ((4, True), (8, True), (12, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / CHECKPOINT_COMPLETE).write_text(str(step))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert latest_checkpoint(tmp_path / "none") is None


def _kill_after_first_checkpoint(
    args: list[str], root: Path, run_dir: Path, sig: int
) -> tuple[int, str]:
    """(exit code, stderr) of a run sent `sig` once its first checkpoint is complete."""
    proc = start_cli(*args, f"paths.root_dir={root}", f"hydra.run.dir={run_dir}")
    deadline = time.monotonic() + 300
    while not _complete_checkpoints(run_dir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=300)
    return proc.returncode, stderr


def _uninterrupted_metrics(args: list[str], root: Path) -> dict:
    done = run_cli(*args, f"paths.root_dir={root}", f"hydra.run.dir={root}/straight")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((root / "straight" / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "signals"),
    [
        ("sft", (signal.SIGTERM, signal.SIGKILL)),
        ("reward", (signal.SIGTERM,)),
        ("dpo", (signal.SIGTERM,)),
        ("ppo", (signal.SIGTERM, signal.SIGKILL)),
    ],
    ids=["sft", "reward", "dpo", "ppo"],
)
def test_killed_run_resumes_to_the_same_result(
    tmp_path: Path, shared_cache: Path, method: str, signals: tuple[int, ...]
):
    """Stopped cleanly (SIGTERM) or killed outright (SIGKILL) after its first checkpoint, a run
    resumed with `resume_from=latest` ends where the uninterrupted one did (one straight run
    per method, compared against each interrupted one)."""
    args, compare = METHODS[method]
    args = [*args, f"paths.cache_dir={shared_cache}"]  # upstream stages built once per session
    expected = _uninterrupted_metrics(args, tmp_path)

    for sig in signals:
        run_dir = tmp_path / f"killed-{sig}"
        code, stderr = _kill_after_first_checkpoint(args, tmp_path, run_dir, sig)
        if sig == signal.SIGTERM:  # clean stop: a checkpoint, exit 143, and how to resume
            assert code == 143, stderr[-2000:]
            assert "resume with: python run.py" in stderr and "resume_from=latest" in stderr
            status = json.loads((run_dir / "metrics.json").read_text())["status"]
            assert status == "interrupted"
        else:
            assert code == -signal.SIGKILL
        stopped = _complete_checkpoints(run_dir)[-1]
        assert int(stopped.name.split("-")[-1]) < expected["train/global_step"]

        resumed = run_cli(
            *args, f"paths.root_dir={tmp_path}", f"hydra.run.dir={run_dir}", "resume_from=latest"
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"from {stopped}" in resumed.stdout + resumed.stderr  # it said where it resumed
        got = json.loads((run_dir / "metrics.json").read_text())
        for key, rel in compare.items():
            assert got[key] == pytest.approx(expected[key], rel=rel, abs=1e-6), (sig, key)


def _ctx(run_dir: Path, resume_from: str | None) -> SimpleNamespace:
    run = SimpleNamespace(resume_from=resume_from)
    return SimpleNamespace(run=run, run_dir=run_dir, checkpoint_dir=run_dir / "checkpoints")


def test_resume_latest_without_checkpoint_starts_from_scratch(tmp_path: Path, caplog):
    (tmp_path / "checkpoints" / "checkpoint-4").mkdir(parents=True)  # cut short: no COMPLETE
    with caplog.at_level("WARNING", logger="rlhf_exp.training"):
        assert resume_checkpoint(_ctx(tmp_path, "latest")) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"resume_from=latest: no complete checkpoint in {tmp_path}/checkpoints yet; "
        "starting from scratch"
    ]
    assert ppo_checkpoint.resolve("latest", tmp_path / "checkpoints") is None


def test_resume_from_a_path_that_is_no_checkpoint_is_an_error(tmp_path: Path):
    with pytest.raises(UserError, match="no complete checkpoint at"):
        resume_checkpoint(_ctx(tmp_path, str(tmp_path)))


def _checkpoint(run_dir: Path, name: str, method: str | None) -> Path:
    """A complete checkpoint dir `<run_dir>/checkpoints/<name>`; the run dir's config.yaml
    names `method` (None: no config.yaml, as in a checkpoint copied out of its run)."""
    path = run_dir / "checkpoints" / name
    path.mkdir(parents=True)
    (path / CHECKPOINT_COMPLETE).write_text("40\n")
    if method is not None:
        (run_dir / "config.yaml").write_text(f"seed: 0\nmethod:\n  name: {method}\n  beta: 0.1\n")
    return path


def test_resume_from_is_refused_before_anything_loads_unless_a_checkpoint_of_this_method(
    tmp_path: Path, capsys
):
    """`resume_from=DIR` at config validation (runner.main, as run.py calls it): a dir that is
    no complete checkpoint, or a checkpoint another method wrote, is one line and exit 2 (it
    used to load the data for ~34 s first, or to resume SFT from DPO weights)."""
    from tests.test_bad_input import _run_main

    dpo = _checkpoint(tmp_path / "dpo_run", "checkpoint-40", "dpo")
    ppo = _checkpoint(tmp_path / "ppo_run", "step-8", "ppo")
    cut_short = tmp_path / "sft_run" / "checkpoints" / "checkpoint-8"
    cut_short.mkdir(parents=True)
    no_marker = (
        "has no COMPLETE marker (not a checkpoint, or one cut short while saving); expected "
        "'latest' or a complete checkpoint dir (<run dir>/checkpoints/checkpoint-N or step-N)"
    )
    cases = [
        (["method=sft", f"resume_from={dpo}"], dpo, "a checkpoint of method=dpo; this run is "
         "method=sft"),
        (["method=dpo", f"resume_from={ppo}"], ppo, "a checkpoint of method=ppo; this run is "
         "method=dpo"),
        (["method=sft", f"resume_from={cut_short}"], cut_short, no_marker),
        (["method=dpo", f"resume_from={dpo.parent}"], dpo.parent, no_marker),
    ]  # fmt: skip
    for args, path, why in cases:
        lines = _run_main(args, tmp_path / "out", capsys)
        assert lines == [f"error: resume_from='{path}' is invalid: {why}"]
    assert not (tmp_path / "out" / "outputs" / "cache").exists()


def test_a_checkpoint_of_this_method_or_of_an_unknown_one_is_accepted(tmp_path: Path):
    from rlhf_exp.config.schema import check_checkpoint_of

    check_checkpoint_of(
        "resume_from", str(_checkpoint(tmp_path / "a", "checkpoint-4", "dpo")), "dpo"
    )
    ppo = _checkpoint(tmp_path / "b", "step-4", "ppo")
    check_checkpoint_of("resume_from", str(ppo), "ppo")
    # no config.yaml beside it (copied out of its run): the method cannot be told, taken as is
    check_checkpoint_of("resume_from", str(_checkpoint(tmp_path / "c", "step-4", None)), "sft")
