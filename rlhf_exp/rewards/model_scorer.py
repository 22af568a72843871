"""A trained reward model behind the reward-function interface: `scorer(prompts, completions)`.

Texts are cut exactly as the reward model was trained on them (`rlhf_exp.data.tokens`: prompt
and completion tokenised apart, the completion ending in EOS when kept whole, the prompt cut
from the left to fit the budget); the score is the head's output at the last real token.
Held-out pairs that are already tokenised are scored with `score_ids`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhf_exp.data.tokens import TokenBudget, encode, with_eos
from rlhf_exp.memory import release_freed_memory

# Padded tokens per scoring batch (sequences x the longest). Whole batches of 64 held-out
# sequences of up to 512 tokens made scoring a 124M reward model use more memory than its
# LoRA training steps did (benchmarks/NOTES.md); the tiny model's batches (64 x ~40) stay whole.
MAX_BATCH_TOKENS = 4096


class RewardModelScorer:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        budget: TokenBudget,
        batch_size: int = 64,
        max_batch_tokens: int = MAX_BATCH_TOKENS,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.budget, self.batch_size = budget, batch_size
        self.max_batch_tokens = max_batch_tokens

    def sequence(self, prompt: list[int], completion: list[int]) -> list[int]:
        """The token ids the model scores for one (prompt, completion), cut to the budget."""
        kept_prompt, (kept,) = self.budget.cut(prompt, [with_eos(completion, self.eos)])
        return kept_prompt + kept

    @property
    def eos(self) -> int:
        return self.tokenizer.eos_token_id

    @torch.no_grad()
    def score_ids(self, sequences: Sequence[list[int]]) -> list[float]:
        """Score of each token-id sequence; batches hold sequences of similar length."""
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        scores = [0.0] * len(sequences)
        try:
            for idx in self._batches(order, [len(s) for s in sequences]):
                batch = self.tokenizer.pad(
                    {"input_ids": [list(sequences[i]) for i in idx]},
                    padding=True,
                    padding_side="right",
                    return_tensors="pt",
                ).to(device)
                logits = self.model(**batch).logits  # (B, 1)
                for i, value in zip(idx, logits[:, 0].float().tolist(), strict=True):
                    scores[i] = value
                del batch, logits
                release_freed_memory()
        finally:
            self.model.train(was_training)
        return scores

    def _batches(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """`order` (shortest first) cut into batches of at most `batch_size` sequences and
        `max_batch_tokens` padded tokens (one sequence alone may exceed it)."""
        batches: list[list[int]] = [[]]
        for i in order:
            current = batches[-1]
            padded = (len(current) + 1) * lengths[i]  # i is the longest so far
            if current and (len(current) == self.batch_size or padded > self.max_batch_tokens):
                batches.append(current := [])
            current.append(i)
        return [b for b in batches if b]

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        pairs = zip(
            encode(self.tokenizer, prompts), encode(self.tokenizer, completions), strict=True
        )
        return self.score_ids([self.sequence(p, c) for p, c in pairs])


def pairwise_accuracy(scorer: RewardModelScorer, rows: Any) -> dict[str, float]:
    """Over tokenised pairs (prompt_ids/chosen_ids/rejected_ids, already cut): the fraction
    where chosen scores above rejected, a tie counting one half (an equal score is no
    preference, not a wrong one), the mean margin, and how many pairs tied."""
    prompts = list(rows["prompt_ids"])
    chosen, rejected = (
        torch.tensor(scorer.score_ids([p + c for p, c in zip(prompts, rows[side], strict=True)]))
        for side in ("chosen_ids", "rejected_ids")
    )
    return {
        "accuracy": ((chosen > rejected).float() + 0.5 * (chosen == rejected).float())
        .mean()
        .item(),
        "margin": (chosen - rejected).mean().item(),
        "ties": int((chosen == rejected).sum().item()),
        "pairs": len(prompts),
    }
