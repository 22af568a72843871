"""The reward-model scorer: the training cut for texts, and ties that count one half."""

from __future__ import annotations

import torch
from datasets import Dataset

from rlhf_exp.data.tokens import TokenBudget, encode
from rlhf_exp.rewards.model_scorer import RewardModelScorer, pairwise_accuracy


class LengthModel(torch.nn.Module):
    """Scores a sequence by its number of real tokens (or a constant): a known scorer."""

    def __init__(self, pad_id: int, constant: bool = False) -> None:
        super().__init__()
        self.pad_id, self.constant = pad_id, constant
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[list[int]] = []

    def forward(self, input_ids, attention_mask):  # noqa: D401
        for ids, mask in zip(input_ids, attention_mask, strict=True):
            self.seen.append(ids[mask.bool()].tolist())
        score = torch.zeros(len(input_ids)) if self.constant else attention_mask.sum(1).float()
        return type("Out", (), {"logits": score[:, None] + self.weight})()


def pairs(rows):
    return Dataset.from_list(
        [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in rows]
    )


def test_ties_count_one_half_never_zero(tiny_lm):
    _, tok = tiny_lm
    scorer = RewardModelScorer(
        LengthModel(tok.pad_token_id, constant=True), tok, TokenBudget(32, 8)
    )
    out = pairwise_accuracy(scorer, pairs([([1, 2], [3], [4, 5])] * 6))
    assert out == {"accuracy": 0.5, "margin": 0.0, "ties": 6, "pairs": 6}


def test_accuracy_counts_wins_losses_and_ties(tiny_lm):
    _, tok = tiny_lm
    scorer = RewardModelScorer(LengthModel(tok.pad_token_id), tok, TokenBudget(32, 8), batch_size=2)
    rows = [([1], [3, 3], [4]), ([1], [3], [4, 4]), ([1], [3], [4])]  # win, loss, tie
    out = pairwise_accuracy(scorer, pairs(rows))
    assert out["accuracy"] == 0.5 and out["ties"] == 1


def test_texts_are_cut_like_training_data(tiny_lm):
    _, tok = tiny_lm
    model = LengthModel(tok.pad_token_id)
    scorer = RewardModelScorer(model, tok, TokenBudget(12, 4))
    prompt = "the film number 1 was fine and then it ended. " * 5
    scores = scorer([prompt], [" fine"])
    (seen,) = model.seen
    reply = encode(tok, [" fine"])[0] + [tok.eos_token_id]
    assert seen[-len(reply) :] == reply  # the reply survives, with EOS
    assert seen[: -len(reply)] == encode(tok, [prompt])[0][-(12 - len(reply)) :]  # prompt's end
    assert scores == [12.0]


class BatchRecorder(LengthModel):
    def __init__(self, pad_id: int) -> None:
        super().__init__(pad_id)
        self.shapes: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask):  # noqa: D401
        self.shapes.append(tuple(input_ids.shape))
        return super().forward(input_ids, attention_mask)


def test_scoring_batches_cap_padded_tokens_and_keep_every_score(tiny_lm):
    """Long held-out sequences are scored in smaller batches (memory), short ones in full
    batches (speed); every sequence gets its own score either way."""
    _, tok = tiny_lm
    model = BatchRecorder(tok.pad_token_id)
    scorer = RewardModelScorer(model, tok, TokenBudget(64, 32), batch_size=4, max_batch_tokens=40)
    lengths = [3, 3, 3, 3, 3, 20, 20, 30]
    scores = scorer.score_ids([[5] * n for n in lengths])
    assert scores == [float(n) for n in lengths]
    assert model.shapes == [(4, 3), (2, 20), (1, 20), (1, 30)]  # <= 4 rows, <= 40 tokens
    assert all(rows * width <= 40 for rows, width in model.shapes)
