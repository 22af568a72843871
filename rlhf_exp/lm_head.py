"""TRL's fused LM head on CPU: score only the positions a loss reads, in row blocks that stay
in cache, with its gradient matmuls at bf16 speed.

SFT, DPO, KTO, RLOO and GRPO get per-token log-probabilities from TRL's fused LM head
(`trl.trainer.utils.add_fused_lm_head`, `ChunkedLogProbFunction`). On CPU it costs the most
of any device, for three reasons `install_cpu_lm_head()` removes:

- It scores every position, prompt and padding included, so that a compiled graph on Neuron
  keeps one shape; only Triton devices score just the labelled ones. Real preference data is
  long prompts with short replies, so most scored positions are ones no loss reads. CPU now
  takes TRL's own compact path (gather the labelled positions, score them, scatter back).
- Its torch fallback for devices without Triton folds `[4096, 32768]` tiles with a dozen
  fp32 passes each (cast, scale, exp, the one-hot compare, subtract, multiply...), every one
  a trip to memory. `CpuFusedLogProbs` takes a few rows at a time over the whole vocabulary,
  so each fp32 block stays in cache and is worked in place.
- Its gradient matmuls accumulate in fp32 from bf16 inputs (rounding each vocabulary
  chunk's product to bf16 before summing biases training, TRL found). CUDA does that in one
  cuBLAS call; CPU torch has no bf16 matmul with an fp32 output, so TRL upcasts both inputs
  and runs fp32 matmuls, ~5x slower than bf16 with AMX here. oneDNN can run fp32 matmuls on
  bf16 inputs with fp32 accumulation and output (`torch.backends.mkldnn.matmul.
  fp32_precision = "bf16"`): for inputs that already are bf16 values that is exactly the
  CUDA computation, at ~2.5x the fp32 speed.

The per-token values and gradients are TRL's to rounding (tests/test_lm_head.py); the numbers
are in benchmarks/NOTES.md, "TRL's fused LM head on CPU".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
import trl
import trl.trainer.utils as trl_utils

log = logging.getLogger(__name__)

# TRL's own predicate and function, kept for the devices this module leaves alone (CUDA, XPU,
# Neuron, MPS)
_trl_use_triton = getattr(trl_utils, "_use_triton", None)
_trl_function = getattr(trl_utils, "_ChunkedLogProbFunction", None)
_gather_head = getattr(trl_utils, "maybe_gather_lm_head_ctx", None)

# fp32 logits per row block (32 MB): a block's passes stay in cache, its matmuls stay large
BLOCK_ELEMENTS = 1 << 23


def install_cpu_lm_head() -> None:
    """Make TRL's fused LM head score only labelled positions, with `CpuFusedLogProbs`, on
    CPU; other devices keep TRL's code. Idempotent."""
    if None in (_trl_use_triton, _trl_function, _gather_head):
        # A TRL release that moved these: runs stay correct, only slower on CPU
        log.warning(
            "trl %s moved its fused LM head's internals: it runs unchanged on CPU (slower, "
            "same results)",
            trl.__version__,
        )
        return
    trl_utils._use_triton = _compact_on_cpu
    trl_utils._ChunkedLogProbFunction = _ByDevice


def _compact_on_cpu(device: torch.device) -> bool:
    # Eager CPU has no compiled shapes to keep, so the gather is pure gain
    return device.type == "cpu" or _trl_use_triton(device)


class _ByDevice:
    """TRL's `ChunkedLogProbFunction` everywhere but on CPU, where `CpuFusedLogProbs` runs."""

    @staticmethod
    def apply(hidden: torch.Tensor, *args: Any) -> Any:
        if hidden.device.type == "cpu":
            return CpuFusedLogProbs.apply(hidden, *args)
        return _trl_function.apply(hidden, *args)


@contextlib.contextmanager
def _fp32_matmuls_on_bf16_units(enabled: bool) -> Iterator[None]:
    """fp32 matmuls round their inputs to bf16, multiply them exactly, accumulate and write fp32
    (oneDNN; a no-op where the CPU has no bf16 units or torch lacks the switch)."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    if not enabled or not hasattr(matmul, "fp32_precision"):
        yield
        return
    before = matmul.fp32_precision
    matmul.fp32_precision = "bf16"
    try:
        yield
    finally:
        matmul.fp32_precision = before


def _rows_per_block(vocab: int) -> int:
    return max(1, BLOCK_ELEMENTS // max(1, vocab))


def _logits_fp32(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, transform: tuple
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A fresh fp32 block of transformed logits z, and tanh's output when softcapped. The matmul
    runs in the weight's (compute) dtype, as TRL's tiles do."""
    logit_scale, softcap, inv_t = transform
    logits = torch.mm(hidden.to(weight.dtype), weight.t())
    if bias is not None:
        logits.add_(bias)
    z = logits.float() if logits.dtype != torch.float32 else logits
    if softcap is None:
        if logit_scale * inv_t != 1.0:
            z.mul_(logit_scale * inv_t)
        return z, None
    t = z.mul_(logit_scale / softcap).tanh_()
    return t * (softcap * inv_t), t


class CpuFusedLogProbs(torch.autograd.Function):
    """TRL's `ChunkedLogProbFunction` (same arguments and outputs) for CPU: per-token
    log-probabilities of `hidden @ weight.T` and the optional entropy, `log(sum p^2)`, mean logit
    and top-1 flag, in row blocks over the whole vocabulary. The backward recomputes each block's
    logits and writes its gradient in place; its matmuls accumulate in fp32."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,  # TRL's vocabulary tile width; a block here spans the whole vocabulary
        final_logit_softcapping: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = ("log_probs",),
    ) -> tuple[torch.Tensor | None, ...]:
        ctx.set_materialize_grads(False)  # entropy is often logged only: no zero gradient for it
        compute = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None
        compute = compute or hidden.dtype
        transform = (logit_scale, final_logit_softcapping, 1.0 / temperature)
        n, vocab = hidden.shape[0], weight.shape[0]

        def per_token(name: str, dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
            return torch.empty(n, dtype=dtype) if name in outputs else None

        logprobs, log_z = torch.empty(n), torch.empty(n)
        entropy, log_sum_sq = per_token("entropy"), per_token("log_sum_sq_probs")
        mean_logits, is_top1 = per_token("mean_logits"), per_token("is_top1", torch.bool)
        w = weight.to(compute)
        b = None if bias is None else bias.to(compute)
        rows = _rows_per_block(vocab)
        with torch.autocast("cpu", enabled=False):
            for start in range(0, n, rows):
                block = slice(start, min(n, start + rows))
                z, _ = _logits_fp32(hidden[block], w, b, transform)
                if is_top1 is not None:
                    # the first maximum, as TRL's: a tie with an earlier token is not a top-1
                    peak, first = z.max(dim=1)
                    is_top1[block] = first == targets[block]
                else:
                    peak = z.amax(dim=1)
                if mean_logits is not None:
                    mean_logits[block] = z.sum(dim=1) / vocab
                z.sub_(peak.unsqueeze(1))
                picked = z.gather(1, targets[block].unsqueeze(1)).squeeze(1)
                e = torch.exp(z)
                sum_e = e.sum(dim=1)
                log_sum = sum_e.log()
                logprobs[block] = picked - log_sum
                log_z[block] = peak + log_sum
                if log_sum_sq is not None:
                    log_sum_sq[block] = torch.linalg.vector_norm(e, dim=1).square().log()
                    log_sum_sq[block] -= 2 * log_sum
                if entropy is not None:
                    entropy[block] = log_sum - e.mul_(z).sum(dim=1) / sum_e
        saved_entropy = log_z if entropy is None else entropy  # a placeholder when not asked
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, saved_entropy)
        ctx.compute, ctx.transform = compute, transform
        logged = (log_sum_sq, mean_logits, is_top1)
        ctx.mark_non_differentiable(*(x for x in logged if x is not None))
        return logprobs, entropy, log_sum_sq, mean_logits, is_top1

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_logprobs: torch.Tensor | None, grad_entropy: torch.Tensor | None, *_: Any
    ) -> tuple[torch.Tensor | None, ...]:
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        none = (None,) * 6  # targets, temperature, chunk size, softcap, scale, outputs
        if grad_logprobs is None and grad_entropy is None:
            return (None, None, None, *none)
        needs_hidden, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        logit_scale, softcap, inv_t = ctx.transform
        n, vocab = hidden.shape[0], weight.shape[0]
        rows = _rows_per_block(vocab)
        grad_hidden = torch.empty(hidden.shape) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape) if needs_weight else None
        grad_bias = torch.zeros(vocab) if needs_bias and bias is not None else None
        with (
            _gather_head(weight, bias),
            torch.autocast("cpu", enabled=False),
            _fp32_matmuls_on_bf16_units(ctx.compute == torch.bfloat16),
        ):
            w = weight.to(ctx.compute)
            b = None if bias is None else bias.to(ctx.compute)
            w32 = weight.float()
            for start in range(0, n, rows):
                block = slice(start, min(n, start + rows))
                z, tanh = _logits_fp32(hidden[block], w, b, ctx.transform)
                log_p = z.sub_(log_z[block].unsqueeze(1))
                d_logprob = None if grad_logprobs is None else grad_logprobs[block].float()
                if grad_entropy is not None:
                    # d(entropy)/dz_j = -p_j (log p_j + entropy)
                    p = torch.exp(log_p)
                    grad = log_p.add_(entropy[block].unsqueeze(1)).mul_(p)
                    grad.mul_(-grad_entropy[block].float().unsqueeze(1))
                    if d_logprob is not None:
                        grad.addcmul_(p, d_logprob.unsqueeze(1), value=-1)
                    del p
                else:
                    grad = log_p.exp_().mul_(-d_logprob.unsqueeze(1))
                if d_logprob is not None:
                    # d(log p_target)/dz_j = 1[j = target] - p_j
                    grad.scatter_add_(1, targets[block].unsqueeze(1), d_logprob.unsqueeze(1))
                if tanh is not None:
                    grad.mul_(1 - tanh * tanh)
                if inv_t * logit_scale != 1.0:
                    grad.mul_(inv_t * logit_scale)
                if grad_hidden is not None:
                    torch.mm(grad, w32, out=grad_hidden[block])
                if grad_weight is not None:
                    grad_weight.addmm_(grad.t(), hidden[block].float())
                if grad_bias is not None:
                    grad_bias += grad.sum(dim=0)
        return (
            None if grad_hidden is None else grad_hidden.to(hidden.dtype),
            None if grad_weight is None else grad_weight.to(weight.dtype),
            None if grad_bias is None else grad_bias.to(bias.dtype),
            *none,
        )
