"""Gold reward functions: fixed scorers of ground truth that runs are judged by.

`vader_sentiment` plays the role of the DPO paper's sentiment classifier on the embedded
sentiment task: VADER's compound score of the completion, in [-1, 1]. It is rule-based, so
it is fast on CPU, deterministic, and needs no download.

    python -c "from rlhf_exp.rewards.gold import vader_compound as v; print(v(['A superb film.']))"
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from rlhf_exp.rewards import register_reward

if TYPE_CHECKING:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer


@cache
def _analyzer() -> SentimentIntensityAnalyzer:
    """One shared analyzer, built on first use (it loads its lexicon from disk)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(texts: list[str]) -> list[float]:
    """VADER compound score of each text, in [-1, 1] (the data generator shares this scorer)."""
    score = _analyzer().polarity_scores
    return [float(score(text)["compound"]) for text in texts]


@register_reward("vader_sentiment")
def vader_sentiment(prompts: list[str], completions: list[str]) -> list[float]:
    """Sentiment of the completion alone: the prompt is given, so it earns no reward."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    return vader_compound(completions)
