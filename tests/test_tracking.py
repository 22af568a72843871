"""Tracker output: TensorBoard scalars readable by TensorBoard's own reader, metrics.json."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from rlhf_exp.tracking import Tracker, summary_table


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalars_and_metrics_round_trip(tmp_path: Path):
    tracker = Tracker(tmp_path)
    tracker.log_scalars({"train/loss": 2.5, "note": "not a number"}, step=1)
    tracker.log_scalars({"train/loss": 1.5}, step=2)
    final = tracker.finish({"eval/accuracy": 0.75, "method": "reward"}, step=2)

    scalars = read_scalars(tmp_path / "tensorboard")
    assert scalars["train/loss"] == [(1, 2.5), (2, 1.5)]
    assert scalars["eval/accuracy"] == [(2, 0.75)]
    assert "note" not in scalars and "method" not in scalars
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == final and on_disk["eval/accuracy"] == 0.75 and on_disk["time/wall_s"] >= 0
    assert on_disk["memory/peak_rss_mb"] > 10  # this Python process, torch loaded


def test_tensorboard_off_writes_only_metrics(tmp_path: Path):
    tracker = Tracker(tmp_path, tensorboard=False)
    tracker.finish({"eval/loss": 1.0}, step=0)
    assert not (tmp_path / "tensorboard").exists()
    assert json.loads((tmp_path / "metrics.json").read_text())["eval/loss"] == 1.0


def test_summary_table_lists_every_metric():
    table = summary_table("reward finished", {"eval/accuracy": 0.91234, "train/global_step": 40})
    assert "reward finished" in table
    assert "eval/accuracy" in table and "0.9123" in table and "40" in table


def test_hparams_land_in_the_run_dir_for_the_hparams_dashboard(tmp_path: Path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    tracker = Tracker(tmp_path)
    tracker.finish(
        {"eval/gold_reward": 0.4, "method": "dpo"},
        step=5,
        hparams={"method": "dpo", "beta": 0.1, "seed": 1},
    )
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    values = session.session_start_info.hparams
    assert values["method"].string_value == "dpo"
    assert values["beta"].number_value == 0.1 and values["seed"].number_value == 1
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    tags = {m.name.tag for m in experiment.experiment.metric_infos}
    assert "hparam/eval/gold_reward" in tags


def test_every_run_logs_every_methods_kl_knob_as_an_hparams_column(compose_cfg):
    """TensorBoard takes the HParams columns from one run: a DPO run must carry PPO's
    `kl_coef` (NaN) and a PPO run DPO's `beta`, so a mixed sweep shows both columns."""
    import math

    from rlhf_exp.config.schema import validate
    from rlhf_exp.runner import run_hparams

    dpo = run_hparams(validate(compose_cfg("method=dpo", "method.beta=0.3", "seed=2")))
    ppo = run_hparams(validate(compose_cfg("method=ppo")))
    assert set(dpo) == set(ppo) >= {"method", "seed", "beta", "kl_coef", "n"}
    assert dpo["method"] == "dpo" and dpo["seed"] == 2 and dpo["beta"] == 0.3
    assert math.isnan(dpo["kl_coef"]) and math.isnan(dpo["n"])
    assert ppo["kl_coef"] == 0.05 and math.isnan(ppo["beta"])
    sft = run_hparams(validate(compose_cfg("method=sft")))
    assert all(math.isnan(sft[k]) for k in ("beta", "kl_coef", "n"))


def test_peak_memory_sees_an_allocation_made_while_it_runs():
    from rlhf_exp.memory import PeakMemory, current_rss_bytes

    meter = PeakMemory(interval=0.01).start()
    before = current_rss_bytes()
    block = bytearray(200 * 2**20)  # 200 MiB, touched so it is resident
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(0.1)
    del block
    peak_mb = meter.stop()
    assert peak_mb >= before / 2**20 + 150
    assert meter.stop() == peak_mb  # stopping twice changes nothing


# In a fresh process: a pytest worker's heap carries whatever earlier tests left in it (free
# holes, arenas, ranges advised for huge pages), and CI once saw 120 MiB released there.
FRAGMENTED_HEAP = """
import rlhf_exp  # first, as run.py does
import torch
from rlhf_exp.memory import _glibc, current_rss_bytes, release_freed_memory
if _glibc("malloc_trim") is None:
    print("no-glibc")
    raise SystemExit
# 64 KiB blocks sit in the heap (below glibc's mmap threshold); the small blocks kept
# between them stop glibc from trimming the top of the heap when the big ones are freed
big, kept = [], []
for _ in range(3000):
    big.append(torch.ones(16_384))
    kept.append(torch.ones(256))
del big
held = current_rss_bytes()
release_freed_memory()
print((held - current_rss_bytes()) / 2**20, len(kept))
"""


def test_release_freed_memory_returns_a_fragmented_heap_to_the_os():
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True
    ).stdout.split()
    if out == ["no-glibc"]:
        pytest.skip("not glibc: no malloc_trim, and release_freed_memory does nothing")
    released_mb, kept = float(out[0]), int(out[1])
    assert released_mb > 150, f"only {released_mb:.0f} MiB of ~190 freed went back to the OS"
    assert kept == 3000


# In a fresh process, as FRAGMENTED_HEAP. Where glibc puts a 64 MiB block and what freeing it
# gives back are certain; whether glibc hands a freed block out again depends on where small
# blocks landed meanwhile (CI once saw no reuse at all), so the tests hold `heap_reused` to
# what it keeps and to the bound it keeps the heap within, not to the reuse itself.
HEAP_REUSED = """
import json
import rlhf_exp
import torch
from rlhf_exp.memory import current_rss_bytes, heap_info, heap_reused
if heap_info() is None:
    print("null")
    raise SystemExit
MiB, BLOCK = 2**20, 16 << 20  # 64 MiB of floats: over glibc's mmap threshold (32 MiB at most)
def a_block():
    mapped, block = heap_info().hblkhd, torch.ones(BLOCK)
    on_its_own, held = (heap_info().hblkhd - mapped) / MiB, current_rss_bytes()
    del block
    return {"mapped": on_its_own, "freed": (held - current_rss_bytes()) / MiB}
out = {"outside": a_block(), "heap_before": heap_info().arena / MiB}
with heap_reused() as heap:
    out["inside"] = a_block()
    out["heap_inside"] = heap_info().arena / MiB
    held = current_rss_bytes()
out["released"] = (held - current_rss_bytes()) / MiB
out["after"] = a_block()
with heap_reused() as heap:  # steps that keep the RSS keep it on; past the limit it turns off
    torch.ones(BLOCK)  # freed at once: a step's worth of resident free heap
    for _ in range(3):
        heap.step_done()
    out["steady"] = heap.active
    # more than twice the free heap: past the limit even if every free byte were reused
    kept = [torch.ones(BLOCK) for _ in range(2 + 2 * heap_info().fordblks // (BLOCK * 4))]
    heap.step_done()
    out["past_limit"] = {"active": heap.active, "then": a_block()}
print(json.dumps(out))
"""


# A small block kept from each step keeps glibc from reusing the large one freed before it: in
# a fresh process (the heap's holes from other blocks would take the small ones)
HEAP_NOT_REUSED = """
import json
import rlhf_exp
import torch
from rlhf_exp.memory import current_rss_bytes, heap_info, heap_reused
start, small, grew = current_rss_bytes(), [], []
with heap_reused() as heap:
    for _ in range(12):
        block = torch.ones(16 << 20)
        small.append(torch.ones(16_384))
        del block
        heap.step_done()
        grew.append((current_rss_bytes() - start) / 2**20)
print(json.dumps(grew if heap_info() else None))
"""


@functools.cache
def heap_reused_probe(huge_pages: str, *malloc_env: tuple[str, str], probe=HEAP_REUSED) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUN"))}
    env |= {"THP_MEM_ALLOC_ENABLE": huge_pages, **dict(malloc_env)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env=env
    ).stdout
    if json.loads(out) is None:
        pytest.skip("not glibc 2.33+: heap_reused does nothing")
    return json.loads(out)


def test_heap_reused_keeps_freed_large_blocks_and_hands_them_back_on_leaving():
    probe = heap_reused_probe("1")
    # outside, glibc maps the block on its own and unmaps it when freed
    assert probe["outside"]["mapped"] >= 64 and probe["outside"]["freed"] >= 60, probe
    # inside, it comes from the heap, and freeing it leaves its pages faulted in there
    assert probe["inside"]["mapped"] == 0 and probe["inside"]["freed"] < 4, probe
    grown = probe["heap_inside"] - probe["heap_before"]
    assert grown > 60, probe
    # leaving trims the heap (what it grew by goes back) and gives glibc its mmap threshold
    assert probe["released"] >= 0.9 * grown, probe
    assert probe["after"]["mapped"] >= 64, probe


def test_heap_reused_maps_large_blocks_again_once_the_rss_passes_its_limit():
    probe = heap_reused_probe("1")
    assert probe["steady"] is True, probe
    assert probe["past_limit"]["active"] is False, probe
    assert probe["past_limit"]["then"]["mapped"] >= 64, probe


def test_heap_reused_keeps_the_heap_bounded_when_glibc_cannot_reuse_its_blocks():
    grew = heap_reused_probe("1", probe=HEAP_NOT_REUSED)
    # without the limit it grew by the whole block at every step after the third: 641 MiB
    assert max(grew) <= 3 * 64 + 32, grew


@pytest.mark.parametrize(
    "malloc_env",
    [("MALLOC_MMAP_THRESHOLD_", "2097152"), ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")],
)
def test_heap_reused_leaves_a_malloc_the_user_tuned_alone(malloc_env):
    probe = heap_reused_probe("1", malloc_env)
    assert probe["inside"]["mapped"] >= 64 and probe["inside"]["freed"] >= 60, probe
    assert probe["heap_inside"] - probe["heap_before"] < 16, probe


def test_heap_reused_does_nothing_without_huge_page_alignment():
    # at 64-byte alignment glibc cannot serve a freed block's size again from it, so keeping
    # freed blocks would grow the heap by one at every allocation
    probe = heap_reused_probe("0")
    assert probe["inside"]["mapped"] >= 64 and probe["inside"]["freed"] >= 60, probe
    assert probe["heap_inside"] - probe["heap_before"] < 16, probe


def test_training_trims_the_heap_where_the_phase_changes_not_between_steps(monkeypatch):
    from transformers import TrainerControl

    import rlhf_exp.training as training

    calls = []
    monkeypatch.setattr(training, "release_freed_memory", lambda: calls.append(1))
    callback = training.ReleaseFreedMemory()

    def step_end(**flags) -> int:
        calls.clear()
        callback.on_step_end(None, None, TrainerControl(**flags))
        return len(calls)

    assert step_end() == 0  # another training step follows
    assert step_end(should_evaluate=True) == 1
    assert step_end(should_save=True) == 1
    assert step_end(should_training_stop=True) == 1


# ------------------------------------------------------------------------- the logger group
def test_tensorboard_is_the_default_logger(compose_cfg):
    from rlhf_exp.config.schema import validate

    logger = validate(compose_cfg()).logger
    assert logger.tensorboard and not logger.csv
    assert logger.wandb is None and logger.mlflow is None
    both = validate(compose_cfg("logger=[tensorboard,csv]")).logger
    assert both.tensorboard and both.csv
    assert validate(compose_cfg("logger=wandb")).logger.wandb.mode == "offline"
    assert validate(compose_cfg("logger=mlflow")).logger.mlflow.tracking_uri is None


def _trainer_log(tracker: Tracker, logs: dict, step: int) -> None:
    """What a transformers trainer does at a logging step, without training."""
    from types import SimpleNamespace

    state = SimpleNamespace(is_world_process_zero=True, global_step=step)
    for callback in tracker.trainer_callbacks():
        callback.on_log(None, state, None, logs=logs)


def test_csv_logger_writes_every_scalar_ours_and_the_trainers(tmp_path: Path):
    import csv

    tracker = Tracker(tmp_path, tensorboard=False, csv=True)
    tracker.log_scalars({"objective/kl": 0.5, "note": "not a number"}, step=1)
    _trainer_log(tracker, {"loss": 1.5, "eval_accuracy": 0.75, "epoch": 0.5}, step=2)
    tracker.finish({"eval/accuracy": 0.8, "method": "reward"}, step=2)

    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "key", "value"]
    values = {(step, key): float(value) for step, key, value in rows[1:]}
    assert values[("1", "objective/kl")] == 0.5
    assert values[("2", "train/loss")] == 1.5  # trainer keys named as in TensorBoard
    assert values[("2", "eval/accuracy")] == 0.8  # the final value, logged after the trainer's
    assert values[("2", "train/epoch")] == 0.5 and ("2", "time/wall_s") in values
    assert not any(key in ("note", "method") for _, key in values)


@pytest.mark.parametrize("package", ["wandb", "mlflow"])
def test_missing_logger_package_is_one_line_naming_the_install(tmp_path, monkeypatch, package):
    from rlhf_exp.config.schema import MlflowSpec, WandbSpec
    from rlhf_exp.errors import UserError

    monkeypatch.setitem(sys.modules, package, None)  # import fails, as when not installed
    spec = {"wandb": WandbSpec(), "mlflow": MlflowSpec()}[package]
    with pytest.raises(UserError) as err:
        Tracker(tmp_path, csv=True, **{package: spec})
    assert str(err.value) == (
        f"logger={package} needs the {package} package, which is not installed: "
        f"pip install {package}"
    )


def test_wandb_is_offline_in_the_run_dir_by_default(tmp_path: Path, monkeypatch):
    from rlhf_exp.config.schema import WandbSpec

    run = SimpleNamespace(logged=[], config={}, finished=False)
    run.log = lambda metrics, step: run.logged.append((step, metrics))
    run.config = SimpleNamespace(values={}, update=lambda d: run.config.values.update(d))
    run.finish = lambda: setattr(run, "finished", True)
    init: dict = {}
    wandb = SimpleNamespace(init=lambda **kw: init.update(kw) or run)
    monkeypatch.setitem(sys.modules, "wandb", wandb)

    tracker = Tracker(tmp_path, tensorboard=False, wandb=WandbSpec())
    _trainer_log(tracker, {"loss": 1.5}, step=3)
    tracker.finish({"eval/kl": 0.1}, step=3, hparams={"method": "dpo", "beta": 0.1})

    assert init["mode"] == "offline" and init["dir"] == str(tmp_path)
    assert run.logged[0] == (3, {"train/loss": 1.5}) and run.logged[-1][1]["eval/kl"] == 0.1
    assert run.config.values == {"method": "dpo", "beta": 0.1} and run.finished


def test_mlflow_is_a_file_store_in_the_run_dir_by_default(tmp_path: Path, monkeypatch):
    from rlhf_exp.config.schema import MlflowSpec

    seen: dict = {"batches": [], "params": {}}

    class Client:
        def __init__(self, tracking_uri: str) -> None:
            seen["uri"] = tracking_uri

        def get_experiment_by_name(self, name):
            return None

        def create_experiment(self, name):
            seen["experiment"] = name
            return "1"

        def create_run(self, experiment_id, run_name):
            return SimpleNamespace(info=SimpleNamespace(run_id="r1"))

        def log_batch(self, run_id, metrics):
            seen["batches"].append({m.key: (m.value, m.step) for m in metrics})

        def log_param(self, run_id, key, value):
            seen["params"][key] = value

        def set_terminated(self, run_id):
            seen["ended"] = run_id

    metric = lambda key, value, timestamp, step: SimpleNamespace(key=key, value=value, step=step)  # noqa: E731
    mlflow = SimpleNamespace(MlflowClient=Client, entities=SimpleNamespace(Metric=metric))
    monkeypatch.setitem(sys.modules, "mlflow", mlflow)

    tracker = Tracker(tmp_path, tensorboard=False, mlflow=MlflowSpec())
    tracker.log_scalars({"train/loss": 2.0}, step=1)
    tracker.finish({"eval/kl": 0.1}, step=1, hparams={"seed": 0})

    assert seen["uri"] == (tmp_path / "mlruns").absolute().as_uri()  # file:, nothing remote
    assert seen["batches"][0] == {"train/loss": (2.0, 1)}
    assert seen["params"] == {"seed": 0} and seen["ended"] == "r1"
