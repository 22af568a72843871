"""Single entrypoint: `python run.py method=sft`, `python run.py -m method=sft,reward`."""

import hydra
from omegaconf import DictConfig

from rlhf_exp.runner import main as run_main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_main(cfg)


if __name__ == "__main__":
    main()
