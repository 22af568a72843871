"""TRL's fused LM head on CPU: score only the positions a loss reads.

SFT, DPO, KTO, RLOO and GRPO get per-token log-probabilities from TRL's fused LM head
(`trl.trainer.utils.add_fused_lm_head`). On Triton devices it scores only the positions whose
label is not -100; everywhere else it scores every position, prompt and padding included, so
that a compiled graph on Neuron keeps one shape. On CPU that choice costs the most: the head
(50k vocabulary at GPT-2's size) is the largest matmul of a step, its backward runs in fp32
there (`_addmm_fp32`: torch's CPU build has no bf16 matmul with an fp32 output), and its
torch fallback makes fp32 copies of whole `[4096, 32768]` tiles. Real preference data is long
prompts with short replies, so most scored positions are ones no loss reads.

`score_labelled_positions_only()` makes CPU take TRL's own compact path (gather the labelled
positions, score them, scatter the results back), the one CUDA runs. The loss, its gradients
and the logged entropy and accuracy are the same; only the wasted rows go
(benchmarks/NOTES.md, "TRL's fused LM head on CPU").
"""

from __future__ import annotations

import logging

import torch
import trl
import trl.trainer.utils as trl_utils

log = logging.getLogger(__name__)

# TRL's own predicate, kept for the devices this module leaves alone (CUDA, XPU, Neuron, MPS)
_trl_use_triton = getattr(trl_utils, "_use_triton", None)


def _compact_on_cpu(device: torch.device) -> bool:
    # Eager CPU has no compiled shapes to keep, so the gather is pure gain
    return device.type == "cpu" or _trl_use_triton(device)


def score_labelled_positions_only() -> None:
    """Make TRL's fused LM head score only labelled positions on CPU too. Idempotent."""
    if _trl_use_triton is None:
        # A TRL release that moved the predicate: runs stay correct, only slower on CPU
        log.warning(
            "trl %s has no trl.trainer.utils._use_triton: its fused LM head scores every "
            "position on CPU (slower, same results)",
            trl.__version__,
        )
        return
    trl_utils._use_triton = _compact_on_cpu
