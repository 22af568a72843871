"""Pure metrics of the shared evaluation: BLEU, win rate, diversity, intervals.

No models here: each function takes texts or numbers, so each is tested on hand-made inputs.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

from nltk.tokenize import wordpunct_tokenize
from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu


def _words(text: str) -> list[str]:
    # Regex tokenisation: nltk's word_tokenize would need the punkt download.
    return wordpunct_tokenize(text.lower())


def bleu(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Reference-overlap BLEU-4 of each hypothesis against its one reference.

    `sentence` is the mean of smoothed (Chen & Cherry method 1) sentence BLEU, as the original
    notebook computed it; `corpus` pools n-gram counts over all pairs. It measures overlap
    with the preferred references, not quality: a policy can gain reward and lose BLEU.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    refs = [[_words(r)] for r in references]
    hyps = [_words(h) for h in hypotheses]
    smooth = SmoothingFunction().method1
    per_row = [
        sentence_bleu(r, h, smoothing_function=smooth) for r, h in zip(refs, hyps, strict=True)
    ]
    return {
        "sentence": statistics.fmean(per_row) if per_row else 0.0,
        "corpus": corpus_bleu(refs, hyps, smoothing_function=smooth) if hyps else 0.0,
    }


def win_rate(scores: Sequence[float], baseline: Sequence[float]) -> float:
    """Fraction of prompts where `scores` beats `baseline`, ties counting one half."""
    if len(scores) != len(baseline) or not scores:
        raise ValueError("win_rate needs two equally long, non-empty score lists")
    wins = sum(
        1.0 if s > b else 0.5 if s == b else 0.0 for s, b in zip(scores, baseline, strict=True)
    )
    return wins / len(scores)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams in `texts` (Li et al. 2016); 0 when there are none."""
    grams = [tuple(w[i : i + n]) for w in map(_words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def bootstrap_ci(
    values: Sequence[float], *, level: float = 0.95, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values`."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = random.Random(seed)
    n = len(values)
    means = sorted(statistics.fmean(rng.choices(values, k=n)) for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * (resamples - 1))], means[int((1 - tail) * (resamples - 1))]
