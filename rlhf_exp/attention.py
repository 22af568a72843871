"""`model.attn_implementation=auto`: SDPA, except for short bf16 rows on a CPU, where the
model's own eager attention runs.

On a CPU, torch's fused SDPA kernel computes bf16 attention's backward slowly for short rows:
at GPT-2 small's shape, a layer's forward + backward over 32 rows of 63 tokens took 52 ms
against eager attention's 20 ms, and whole forward + backward passes ran 1.25x faster with
eager attention up to 96 tokens per row. At 128 tokens the two tie; from 192 on SDPA wins, by
2x at 256 and beyond (benchmarks/NOTES.md, "Attention by row length"). In fp32 they tie, and
on a GPU SDPA's kernels are the ones to use. So the choice is made at every call, from the
rows the call sees: a batch of short rows and one of long rows in the same run each get the
faster kernel.

Registered with transformers' attention interface under `NAME`: a model loaded with it calls
`attention` in each layer. The mask is built as for SDPA (boolean, or none when causal alone
is enough); the eager branch turns it into the additive float mask eager attention takes, the
same one `attn_implementation="eager"` builds, so each branch computes exactly what that
implementation would.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

# The name contains "sdpa": transformers then checks, when loading, that the model supports
# SDPA, as it does for its own "sdpa".
NAME = "rlhf_exp_sdpa_or_eager"

# The longest key length (tokens per row, padding included) that runs eager attention
EAGER_MAX_KEYS = 96


def register() -> None:
    """Make `NAME` a valid `attn_implementation` (idempotent)."""
    AttentionInterface.register(NAME, attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)


def eager_wins(query: torch.Tensor, key: torch.Tensor) -> bool:
    """Whether eager attention is the faster kernel for this call (see the module docstring)."""
    return (
        query.device.type == "cpu"
        and query.dtype == torch.bfloat16
        and key.shape[-2] <= EAGER_MAX_KEYS
    )


def attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    # the model's own eager attention (each modelling file defines one for its quirks)
    eager = None
    if eager_wins(query, key):
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    if eager is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    # SDPA's flag, decided as sdpa_attention_forward decides it; eager reads the mask alone
    causal = kwargs.pop("is_causal", None)
    causal = getattr(module, "is_causal", True) if causal is None else causal
    mask = additive_mask(attention_mask, query, key, causal)
    return eager(module, query, key, value, mask, **kwargs)


def additive_mask(
    mask: torch.Tensor | None, query: torch.Tensor, key: torch.Tensor, causal: bool
) -> torch.Tensor | None:
    """SDPA's boolean mask (True = attend) as eager attention's float mask: 0 where a query
    attends, the float32 minimum where it does not. SDPA's mask builder leaves the mask out
    when causality alone is enough (no padding); eager attention needs it written out."""
    q_len, k_len = query.shape[-2], key.shape[-2]
    if mask is None:
        if not causal or q_len == 1:  # one new token sees every key before it
            return None
        rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        mask = (torch.arange(k_len, device=query.device)[None, :] <= rows)[None, None]
    if mask.dtype != torch.bool:  # already additive
        return mask
    zero = torch.zeros((), dtype=torch.float32, device=mask.device)
    return torch.where(mask, zero, torch.finfo(torch.float32).min)
