"""The `rlhf-exp` console script; `python run.py` in a checkout calls the same `main`.

    rlhf-exp method=sft debug=fast               # one run
    rlhf-exp -m method=sft,reward                # a Hydra multirun
    rlhf-exp --cfg job method=dpo                # the composed config, nothing run
    eval "$(rlhf-exp -sc install=bash)"          # tab completion of groups and keys

Configs come from `conf_dir()`: the packaged `rlhf_exp/conf` of an installed wheel, else the
repo's `conf/`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from rlhf_exp import signals
from rlhf_exp.config.location import conf_dir
from rlhf_exp.config.overrides import run_reporting_bad_overrides
from rlhf_exp.config.schema import check_run_mode
from rlhf_exp.errors import UserError
from rlhf_exp.runner import main as run_main


# An absolute config_path: Hydra then reads that dir, wherever the package is installed.
@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    try:  # a sweep preset without -m: one line, before a run dir is claimed
        check_run_mode(HydraConfig.get())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return run_main(cfg)


def main() -> None:
    """Run the command line; exit 2 on bad input, 130/143 when stopped by SIGINT/SIGTERM."""
    # SIGINT/SIGTERM are handled for the whole process (rlhf_exp.signals, README "Interrupts"):
    # one arriving before a run or between the jobs of a sweep stops the next one at its start.
    with signals.handling(owns_process=True) as guard:
        try:
            # An override Hydra cannot compose: one line and exit code 2, like every other
            # bad input.
            run_reporting_bad_overrides(hydra_main, conf_dir=conf_dir())
        except signals.Stop as stop:  # a second signal outside any run
            print(f"stopped by {signals.signal_name(stop.signum)}", file=sys.stderr)
            sys.exit(signals.exit_code(stop.signum))
        if guard.signum is not None:  # it came when no run was left to stop
            sys.exit(signals.exit_code(guard.signum))


if __name__ == "__main__":
    main()
