"""A trained reward model behind the reward-function interface: `scorer(prompts, completions)`.

Texts are scored the way TRL's `RewardTrainer` trained on them: prompt + completion with the
eos token appended, right-padded, truncated to `max_length`; the score is the head's output at
the last real token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class RewardModelScorer:
    def __init__(self, model: Any, tokenizer: Any, max_length: int, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    def _text(self, prompt: str, completion: str) -> str:
        eos = self.tokenizer.eos_token
        text = prompt + completion
        return text if text.endswith(eos) else text + eos

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        scores: list[float] = []
        try:
            for start in range(0, len(prompts), self.batch_size):
                texts = [
                    self._text(p, c)
                    for p, c in zip(
                        prompts[start : start + self.batch_size],
                        completions[start : start + self.batch_size],
                        strict=True,
                    )
                ]
                batch = self.tokenizer(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                    padding_side="right",
                ).to(device)
                logits = self.model(**batch).logits  # (B, 1)
                scores.extend(logits[:, 0].float().tolist())
        finally:
            self.model.train(was_training)
        return scores


def pairwise_accuracy(scorer: RewardModelScorer, rows: Any) -> dict[str, float]:
    """Fraction of pairs where the reward of `chosen` exceeds that of `rejected`, and the
    mean margin, over every row of `rows` (prompt/chosen/rejected)."""
    prompts = list(rows["prompt"])
    chosen = torch.tensor(scorer(prompts, list(rows["chosen"])))
    rejected = torch.tensor(scorer(prompts, list(rows["rejected"])))
    return {
        "accuracy": (chosen > rejected).float().mean().item(),
        "margin": (chosen - rejected).mean().item(),
        "pairs": len(prompts),
    }
