"""RL building blocks every method and the evaluation share, on tensors (imports only torch):
masked statistics, per-token log-probs of a response as the sampler drew it, entropy, the KL
estimators, and forwards over left-padded rows in length-sorted chunks.

    python -c "import torch; from rlhf_exp.rl import kl_estimate; \
print(kl_estimate(torch.tensor([-1.0]), torch.tensor([-2.0]), 'k3'))"

Shapes: B = sequences, R = response tokens, V = vocabulary. A `mask` is 1 on real response
tokens (the first EOS included) and 0 on the padding after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


# ------------------------------------------------------------------------- masked statistics
def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (all of them, or along `dim`)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over masked positions; Bessel-corrected like TRL's `masked_var`."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / std over masked positions; `shift_mean=False` adds the mean back (rewards
    keep their sign, as in TRL's reward whitening). Masked positions come out as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


# ----------------------------------------------------------------------------- log-probs, KL
def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token]: (..., V), (...) -> (...)."""
    # log p = z_tok - logsumexp(z): avoids materialising the (B, R, V) log-softmax twice
    picked = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_of(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: (..., V) -> (...); -inf logits contribute 0."""
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020).

    With r = pi_ref/pi: k1 = -log r, unbiased, can be negative; k2 = (log r)^2 / 2, biased,
    low variance, >= 0; k3 = (r - 1) - log r, unbiased and always >= 0, lower variance than
    k1 when the policies are close. Summed over a sampled sequence's tokens, k1 and k3 are
    unbiased estimates of the sequence-level KL (chain rule).
    """
    log_ratio = ref_logprobs - logprobs  # log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl estimator {kind!r}: choose k1, k2 or k3")


# ----------------------------------------------------------------------- responses in context
def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions as `generate` assigns them to left-padded rows: count real tokens only."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def without_last_token(
    input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + response minus its last column: what scoring the response needs.

    Position P-1+t predicts response token t, and the state before token t is what the critic
    values; the last token predicts nothing scored. Causal attention leaves every earlier
    position as it was, so a forward without it gives the same log-probs and values for one
    column less, and no slice of the logits (whose backward zero-fills a tensor of their size).
    """
    return input_ids[:, :-1], attention_mask[:, :-1]


def response_logprobs(
    logits: torch.Tensor, response_ids: torch.Tensor, temperature: float, pad_id: int
) -> torch.Tensor:
    """log pi(token) as the sampler saw it: logits / T with PAD suppressed. (B, R); 0 on PAD.

    PAD fills the positions after EOS; their log-prob would be -inf, and -inf * 0 in a masked
    mean is NaN, so they read 0 instead (every caller masks them anyway).

    Computed in fp32 a few rows at a time, forward and backward (`_ResponseLogprobs`): at 124M
    the (B, R, V) fp32 copies, scaled, PAD-filled and exponentiated one after another, were
    ~16% of a PPO update step (benchmarks/NOTES.md, "PPO's log-probs a few rows at a time").
    """
    is_pad = response_ids == pad_id
    tokens = response_ids.masked_fill(is_pad, 0)
    logp = _ResponseLogprobs.apply(logits, tokens, float(temperature), int(pad_id))
    return logp.masked_fill(is_pad, 0.0)


_CHUNK_ELEMENTS = 1 << 22  # fp32 logits per chunk (16 MB): the copies stay small, the ops big


def _scaled(chunk: torch.Tensor, temperature: float, pad_id: int) -> torch.Tensor:
    """fp32 (or wider) logits / T with PAD at -inf: what the sampler drew from."""
    z = chunk.to(torch.promote_types(chunk.dtype, torch.float32), copy=True)
    if temperature != 1.0:
        z.div_(temperature)
    z[..., pad_id] = float("-inf")  # generation never samples PAD, so neither may this
    return z


class _ResponseLogprobs(torch.autograd.Function):
    """z[token] - logsumexp(z), z = logits / T with PAD at -inf, in row chunks; the gradient
    (onehot - softmax(z)) / T is built chunk by chunk in the logits' own dtype."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, tokens: torch.Tensor, temperature: float, pad_id: int
    ) -> torch.Tensor:
        rows = max(1, _CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
        out, lse = [], []
        for start in range(0, logits.shape[0], rows):
            z = _scaled(logits[start : start + rows], temperature, pad_id)
            lse.append(torch.logsumexp(z, dim=-1))
            out.append(z.gather(-1, tokens[start : start + rows].unsqueeze(-1)).squeeze(-1))
        lse_all = torch.cat(lse)
        ctx.save_for_backward(logits, tokens, lse_all)
        ctx.temperature, ctx.pad_id, ctx.rows = temperature, pad_id, rows
        return torch.cat(out) - lse_all

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        logits, tokens, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits, memory_format=torch.contiguous_format)
        scale = grad / ctx.temperature
        for start in range(0, logits.shape[0], ctx.rows):
            stop = start + ctx.rows
            z = _scaled(logits[start:stop], ctx.temperature, ctx.pad_id)
            g = z.sub_(lse[start:stop].unsqueeze(-1)).exp_()  # softmax, 0 at PAD
            g.mul_(-scale[start:stop].unsqueeze(-1))
            g.scatter_add_(-1, tokens[start:stop].unsqueeze(-1), scale[start:stop].unsqueeze(-1))
            grad_logits[start:stop] = g
        return grad_logits, None, None, None


@torch.no_grad()
def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_ids: torch.Tensor,
    temperature: float,
    pad_id: int,
) -> torch.Tensor:
    """log pi(token) of each response token under `model`, as the sampler saw it: (B, R).

    `input_ids`/`attention_mask` hold the left-padded prompt and the response side by side
    (positions count real tokens only, as `generate` assigned them), so a model scored on its
    own samples reproduces their log-probs.
    """
    ids, attention = without_last_token(input_ids, attention_mask)
    logits = model(
        input_ids=ids,
        attention_mask=attention,
        position_ids=position_ids(attention),
        logits_to_keep=response_ids.shape[1],  # the lm_head runs on the response positions only
        use_cache=False,
    ).logits
    return response_logprobs(logits, response_ids, temperature, pad_id)


# ------------------------------------------------------------------ batches of left-padded rows
def by_length(
    attention_mask: torch.Tensor, n_response: int, rows: int
) -> list[tuple[torch.Tensor, int]]:
    """Chunks of at most `rows` rows, shortest prompts first, each with the first column that is
    not padding in all of its rows: `(row indices, first column)`.

    Prompts are left-padded to the longest of the rollout, so with real data (a few long
    dialogues among short ones) most of a random chunk's columns are padding. Sorted chunks cut
    from their first real column hold the same tokens at the same positions (`position_ids`
    follow the attention mask), in a fraction of the padded width.
    """
    width = attention_mask.shape[1] - n_response
    prompt_tokens = attention_mask[:, :width].sum(1)
    order = torch.sort(prompt_tokens, stable=True).indices
    chunks = []
    for start in range(0, len(order), rows):
        idx = order[start : start + rows]
        chunks.append((idx, width - int(prompt_tokens[idx].max())))
    return chunks


def by_rows(
    forward: Callable[..., tuple[torch.Tensor, ...]],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_response: int,
    rows: int,
) -> tuple[torch.Tensor, ...]:
    """`forward(row indices, input_ids, attention_mask)` over the `by_length` chunks, its
    outputs (each (b, ...)) put back in row order."""
    chunks = [
        (idx, forward(idx, input_ids[idx, first:], attention_mask[idx, first:]))
        for idx, first in by_length(attention_mask, n_response, rows)
    ]
    merged = []
    for k, head in enumerate(chunks[0][1]):
        out = head.new_empty((input_ids.shape[0], *head.shape[1:]))
        for idx, outputs in chunks:
            out[idx] = outputs[k]
        merged.append(out)
    return tuple(merged)
