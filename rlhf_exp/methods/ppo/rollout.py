"""Rollout: prompts for each iteration, sampled responses, scores, and the PPO batch.

    batch = collect(models, prompts, spec, kl_coef, ...)   # one iteration's experience

Per iteration and process: sample `rollout_batch_size` responses with the KV cache (their
log-probs come from the sampling scores, so there is no extra policy pass), then a
reference forward and a critic forward (with the value-head critic the critic forward is a
policy forward, whose log-probs are then used), score each prompt+response, and turn it all
into per-token rewards, advantages and returns (`core.py`). The forwards here and in the update
take rows sorted by prompt length and cut of their shared padding (`rl.by_length`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch

from rlhf_exp import rl
from rlhf_exp.config.ppo import PPOSpec
from rlhf_exp.data.tokens import fit_prompts
from rlhf_exp.generation import generate, max_positions
from rlhf_exp.methods.ppo import core
from rlhf_exp.methods.ppo.models import PolicyAndValue, Reference

ScoreFn = Callable[[list[str], list[str]], list[float]]


class PromptSchedule:
    """Prompts of iteration `step` on process `rank`: a pure function of (seed, step, rank).

    Epoch e walks a seeded permutation of the prompts; the global batch of a step is split
    into one slice per process. Being stateless, a resumed run draws the same prompts.
    """

    def __init__(self, prompts: Sequence[str], seed: int, batch: int, rank: int, world: int):
        self.prompts, self.seed = list(prompts), seed
        self.batch, self.rank, self.world = batch, rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            order = list(range(len(self.prompts)))
            random.Random(self.seed * 100_003 + epoch).shuffle(order)
            self._perms = {epoch: order}  # one epoch at a time is all a step needs
        return self._perms[epoch]

    def __call__(self, step: int) -> list[str]:
        n = len(self.prompts)
        start = (step * self.world + self.rank) * self.batch
        return [self.prompts[self._perm(j // n)[j % n]] for j in range(start, start + self.batch)]


@dataclass
class Batch:
    """One iteration's experience on this process; every tensor's first dim is B."""

    input_ids: torch.Tensor  # (B, P + R) prompt and response
    attention_mask: torch.Tensor  # (B, P + R)
    response_ids: torch.Tensor  # (B, R)
    mask: torch.Tensor  # (B, R) float, 1 on response tokens up to and including the EOS
    logprobs: torch.Tensor  # (B, R) under the sampling policy
    ref_logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor  # (B, R) critic, at rollout time
    advantages: torch.Tensor  # (B, R)
    returns: torch.Tensor  # (B, R)

    def select(self, idx: torch.Tensor, first_column: int = 0) -> Batch:
        """Rows `idx`; prompt + response columns from `first_column` on (`rl.by_length`)."""
        rows = {f.name: getattr(self, f.name)[idx] for f in fields(self)}
        for name in ("input_ids", "attention_mask"):
            rows[name] = rows[name][:, first_column:]
        return Batch(**rows)


def longest_row(tokenizer: Any, prompts: Sequence[str], spec: PPOSpec, model: Any) -> int:
    """Prompt + response tokens of the longest row a rollout of `prompts` can hold: prompts
    cut from the left as `generate` cuts them."""
    cut = min(spec.max_length, max_positions(model)) - spec.response_length
    return max(len(ids) for ids in fit_prompts(tokenizer, prompts, cut)) + spec.response_length


@torch.no_grad()
def collect(
    model: PolicyAndValue,
    reference: Reference,
    tokenizer,
    prompts: list[str],
    score_fn: ScoreFn,
    spec: PPOSpec,
    kl_coef: float,
    device: torch.device,
    micro_rows: int,
) -> tuple[Batch, dict[str, torch.Tensor]]:
    """Experience for `prompts` and its per-sequence statistics (each (B,), for logging).
    The reference and critic forwards take `micro_rows` rows at a time (`rl.by_length`)."""
    policy = model.policy
    rollout = generate(
        policy,
        tokenizer,
        prompts,
        max_new_tokens=spec.response_length,
        temperature=spec.temperature,
        batch_size=len(prompts),
        max_prompt_length=spec.max_length - spec.response_length,
        return_logprobs=True,
    )
    input_ids = rollout.input_ids.to(device)  # (B, P + R)
    attention_mask = rollout.attention_mask.to(device)
    response_ids = rollout.response_ids.to(device)  # (B, R)
    mask = rollout.response_mask.to(device).float()
    R = response_ids.shape[1]

    pad_id = tokenizer.pad_token_id
    T = spec.temperature

    def ref_forward(rows, ids, attention):
        return (reference.logprobs(policy, ids, attention, response_ids[rows], T, pad_id),)

    (ref_logprobs,) = rl.by_rows(ref_forward, input_ids, attention_mask, R, micro_rows)
    logprobs = rollout.logprobs.to(device)
    if model.critic is None:
        # value head on the trunk: the critic forward is a policy forward; its log-probs
        # are the full-forward ones the update recomputes, so use them (same cost)
        def policy_forward(rows, ids, attention):
            logits, values = model(ids, attention, R)
            return rl.response_logprobs(logits, response_ids[rows], T, pad_id), values

        logprobs, values = rl.by_rows(policy_forward, input_ids, attention_mask, R, micro_rows)
    else:
        from rlhf_exp.methods.ppo.models import critic_values

        def critic_forward(rows, ids, attention):
            return (critic_values(model.critic, ids, attention, R),)

        (values,) = rl.by_rows(critic_forward, input_ids, attention_mask, R, micro_rows)
    values = values * mask

    scores = torch.tensor(score_fn(prompts, rollout.texts), dtype=torch.float, device=device)
    ended = rollout.ended.to(device)
    raw_scores = scores.clone()
    if spec.missing_eos_penalty is not None:
        scores = torch.where(ended, scores, scores - spec.missing_eos_penalty)
    if spec.reward_clip is not None:
        scores = scores.clamp(-spec.reward_clip, spec.reward_clip)

    kl = rl.kl_estimate(logprobs, ref_logprobs, spec.kl_estimator) * mask  # (B, R)
    rewards, non_score = core.token_rewards(scores, kl, mask, kl_coef)
    if spec.whiten_rewards:
        rewards = rl.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = core.gae(rewards, values, mask, spec.gamma, spec.lam)
    if spec.whiten_advantages:
        advantages = rl.masked_whiten(advantages, mask)

    batch = Batch(
        input_ids,
        attention_mask,
        response_ids,
        mask,
        logprobs,
        ref_logprobs,
        values,
        advantages,
        returns,
    )
    stats = {
        "objective/scores": scores,
        "objective/raw_scores": raw_scores,
        "objective/kl": kl.sum(1),
        "objective/kl_k3": (rl.kl_estimate(logprobs, ref_logprobs, "k3") * mask).sum(1),
        "objective/entropy": (rollout.entropy.to(device) * mask).sum(1),
        "objective/non_score_reward": non_score.sum(1),
        "objective/rlhf_reward": scores + non_score.sum(1),
        "val/value_mean": rl.masked_mean(values, mask, dim=1),
        "val/returns_mean": rl.masked_mean(returns, mask, dim=1),
        "response/length_mean": mask.sum(1),
        "response/eos_fraction": ended.float(),
    }
    return batch, stats
