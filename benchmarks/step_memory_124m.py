"""One reward-model training step at GPT-2 small's shape with LoRA r=8, bare (no trainer):
seconds, tokens/s and the process's peak RSS, for a micro-batch size, accumulation, precision
and gradient checkpointing. What the activations of one step cost, apart from everything else
a run holds (benchmarks/NOTES.md, "At GPT-2 small's size").

    python benchmarks/step_memory_124m.py 8 512 1 autocast gc     # 8 sequences x 512 tokens
    python benchmarks/step_memory_124m.py 2 512 4 autocast nogc    # 2 x 512, 4 micro-batches
    python benchmarks/step_memory_124m.py 8 512 1 fp32 gc          # the notebook's compute
    python benchmarks/step_memory_124m.py 2 512 1 autocast gc live # + live tensors by kind
    python benchmarks/step_memory_124m.py 2 512 1 autocast gc composed-gelu

`live`: one more step under torch's memory profiler, and what the tensors alive at its peak
are (weights, autograd's saved tensors, activations, ...): RSS above that is the allocator's.
`composed-gelu`: GPT-2's GELU as transformers builds it (eight tensor ops) instead of the
fused kernel every model loaded by rlhf_exp runs (`fuse_gelu_tanh`; NOTES, "GPT-2's GELU").

One setting per process (peak RSS is the process's); the best of 2 timed steps after a warm-up.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2ForSequenceClassification

from rlhf_exp.models.loading import fuse_gelu_tanh

OPTIONS = ("live", "composed-gelu")
PRESET = Path(__file__).resolve().parent.parent / "conf" / "model" / "gpt2_shape.yaml"


def main() -> None:
    sequences, tokens, accumulation = (int(a) for a in sys.argv[1:4])
    precision, checkpointing = sys.argv[4], sys.argv[5] == "gc"
    options = set(sys.argv[6:])
    unknown = options - set(OPTIONS)
    if unknown:
        sys.exit(f"unknown options {sorted(unknown)}: choose from {', '.join(OPTIONS)}")
    torch.manual_seed(0)
    shape = OmegaConf.load(PRESET).tiny  # the gpt2_shape preset's own, not a copy of it
    config = GPT2Config(n_layer=shape.n_layer, n_head=shape.n_head, n_embd=shape.n_embd,
                        n_positions=shape.n_positions, vocab_size=shape.vocab_size,
                        num_labels=1, pad_token_id=0)  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type="SEQ_CLS")  # fmt: skip
    base = GPT2ForSequenceClassification(config)
    if "composed-gelu" not in options:
        fuse_gelu_tanh(base)
    model = get_peft_model(base, lora)
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    ids = torch.randint(1, 2000, (sequences, tokens))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step() -> None:
        for _ in range(accumulation):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "autocast"):
                scores = model(input_ids=ids).logits.float()
                half = sequences // 2  # first half "chosen", second "rejected"
                loss = -torch.nn.functional.logsigmoid(scores[:half] - scores[half:]).mean()
            loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    seconds = min(_timed(step) for _ in range(2))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n = sequences * tokens * accumulation
    gelu = "composed" if "composed-gelu" in options else "fused"
    print(f"{precision} checkpointing={checkpointing} {gelu} GELU {sequences}x{accumulation} "
          f"of {tokens} tokens: {seconds:.2f} s/step, {n / seconds:.0f} tokens/s, "
          f"peak RSS {peak:.0f} MB ({before:.0f} MB before the first step)")  # fmt: skip
    if "live" in options:
        _live_tensors(step)


def _live_tensors(step) -> None:
    """The tensors alive at one step's peak, by kind (torch's memory profiler)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import _CATEGORY_TO_COLORS, MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:  # fmt: skip
        step()
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    at_peak = max(sizes, key=sum)
    kinds = [c.name.lower() if c is not None else "unknown" for c in _CATEGORY_TO_COLORS]
    by_kind = zip(kinds, at_peak[1:], strict=True)  # column 0 is torch's padding
    parts = ", ".join(f"{k} {b / 2**20:.0f}" for k, b in by_kind if b)
    print(f"live tensors at the step's peak: {sum(at_peak) / 2**20:.0f} MB ({parts})")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
