"""What saving a LoRA model costs in memory: `save_merged` on a GPT-2-shaped causal LM with LoRA
r=8 on every linear layer, its adapters non-zero. Prints the process's RSS before the save, its
peak during the save (the kernel's high-water mark, reset just before), the save's seconds and
the bytes written. One save per process (the peak is the process's).

    python benchmarks/save_merged_memory.py --layers 12 --width 768 --work /tmp/save_bench
    python benchmarks/save_merged_memory.py --layers 36 --width 1280 --work /tmp/save_bench

To compare two versions of the code, run the script from each (e.g. `PYTHONPATH=<worktree>`),
interleaved, one process per save (benchmarks/NOTES.md, "Saving a LoRA model shard by shard").
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

import rlhf_exp
from rlhf_exp.memory import current_rss_bytes
from rlhf_exp.models import save_merged


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("/proc/self/status has no VmHWM")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=768)
    parser.add_argument("--vocab", type=int, default=50257)
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPT2Config(n_layer=args.layers, n_head=args.width // 64, n_embd=args.width,
                        n_positions=1024, vocab_size=args.vocab)  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"],
                      fan_in_fan_out=True, task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(GPT2LMHeadModel(config), lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)  # a trained adapter: the merge must do work
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<pad>": 0, "a": 1}, unk_token="<pad>")),
        pad_token="<pad>",
    )
    parameters = sum(p.numel() for p in model.parameters())
    out = args.work / "model"
    shutil.rmtree(out, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)

    rss = current_rss_bytes() / 2**20
    _reset_peak()
    start = time.perf_counter()
    save_merged(model, tokenizer, out)
    seconds = time.perf_counter() - start
    peak = _peak_mb()
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(json.dumps({
        "code": str(Path(rlhf_exp.__file__).parent.parent),
        "parameters_m": round(parameters / 1e6, 1),
        "rss_before_mb": round(rss),
        "peak_mb": round(peak),
        "save_extra_mb": round(peak - rss),
        "seconds": round(seconds, 2),
        "written_mb": round(written / 2**20),
    }))  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
