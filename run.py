"""Single entrypoint: `python run.py method=sft`, `python run.py -m method=sft,reward`."""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf_exp import signals
from rlhf_exp.config.overrides import run_reporting_bad_overrides
from rlhf_exp.runner import main as run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    # SIGINT/SIGTERM are handled for the whole process (rlhf_exp.signals, README "Interrupts"):
    # one arriving before a run or between the jobs of a sweep stops the next one at its start.
    with signals.handling(owns_process=True) as guard:
        try:
            # An override Hydra cannot compose: one line and exit code 2, like every other
            # bad input.
            run_reporting_bad_overrides(main, conf_dir=Path(__file__).parent / "conf")
        except signals.Stop as stop:  # a second signal outside any run
            print(f"stopped by {signals.signal_name(stop.signum)}", file=sys.stderr)
            sys.exit(signals.exit_code(stop.signum))
        if guard.signum is not None:  # it came when no run was left to stop
            sys.exit(signals.exit_code(guard.signum))
