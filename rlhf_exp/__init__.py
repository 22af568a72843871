"""rlhf-exp: compare alignment methods (SFT, reward models, PPO, DPO) under one Hydra config."""

import os

# Every training step allocates and frees hundreds of MB (activations, gradients, bf16 casts of
# the weights), and 4 KiB pages make each come back as page faults: 400-620k per step of an
# isolated 124M PPO update. torch's CPU allocator asks Linux for transparent huge pages for
# tensors of 2 MB and more when THP_MEM_ALLOC_ENABLE is set (at 124M: SFT 1.28x, DPO 1.16x,
# reward 1.10x faster; benchmarks/NOTES.md, "Huge pages for large tensors"), and reads it once,
# at its first allocation: so here, before any module of this package imports torch.
# A value already set wins (0 turns it off); elsewhere than Linux torch ignores it.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.1.0"
