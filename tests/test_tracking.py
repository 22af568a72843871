"""Tracker output: TensorBoard scalars readable by TensorBoard's own reader, metrics.json."""

from __future__ import annotations

import json
import time
from pathlib import Path

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
