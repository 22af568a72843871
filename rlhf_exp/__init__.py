"""rlhf-exp: compare alignment methods (SFT, reward models, PPO, DPO) under one Hydra config."""

__version__ = "0.1.0"
