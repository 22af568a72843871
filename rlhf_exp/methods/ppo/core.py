"""PPO's own math on tensors: per-token rewards, GAE, the clipped losses and the KL
controllers (masked statistics, log-probs and KL estimators, shared with the other methods
and the evaluation, live in `rlhf_exp.rl`). Imports only torch, so every function is
testable on hand-made tensors:

    python -c "import torch; from rlhf_exp.methods.ppo.core import gae; \
print(gae(torch.tensor([[0., 0., 1.]]), torch.zeros(1, 3), torch.ones(1, 3), 1.0, 0.95))"

Shapes: B = sequences, R = response tokens. A `mask` is 1 on real response tokens (the first
EOS included) and 0 on the padding after it; every statistic here ignores masked positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rlhf_exp.rl import masked_mean


def token_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards r_t = -beta * KL_t, plus the score at the last real token.

    Ziegler et al. 2019 eq. 2: R(x, y) = r(x, y) - beta * log(pi(y|x) / pi_ref(y|x)), spread
    over tokens so the critic learns where the KL is paid. Returns (rewards, non_score) (B, R).
    """
    mask = mask.to(kl.dtype)
    non_score = -kl_coef * kl * mask  # (B, R)
    last = (mask.sum(1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards = non_score.clone()
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
    return rewards, non_score


# ------------------------------------------------------------------------------------- GAE
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16): (advantages, returns).

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}.
    The episode ends at the last real token: V and r after it are taken as 0, so padding never
    leaks into an advantage. returns = A + V are the critic's targets (B, R).
    """
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    R = rewards.shape[1]
    last_adv = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last_adv)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_adv = (delta + gamma * lam * last_adv) * mask[:, t]
        advantages[:, t] = last_adv
    return advantages, advantages + values


# ------------------------------------------------------------------------------------ losses
@dataclass
class LossStats:
    approxkl: torch.Tensor  # 0.5 * E[(log ratio)^2], a KL(pi_old || pi) estimate
    clipfrac: torch.Tensor  # fraction of tokens where the clipped term was active
    ratio_mean: torch.Tensor
    ratio_max_dev: torch.Tensor  # max |ratio - 1|: exactly 0 before the first update


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cliprange: float,
) -> tuple[torch.Tensor, LossStats]:
    """Clipped surrogate (Schulman et al. 2017, eq. 7), negated to a loss, token-averaged.

    L = -E_t[min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)],  rho_t = pi / pi_old.
    """
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        m = mask.bool()
        stats = LossStats(
            approxkl=0.5 * masked_mean(log_ratio**2, mask),
            clipfrac=masked_mean((clipped > unclipped).to(ratio.dtype), mask),
            ratio_mean=masked_mean(ratio, mask),
            ratio_max_dev=(ratio[m] - 1).abs().max() if m.any() else ratio.new_zeros(()),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (Schulman et al. 2017 code; Huang et al. 2022, detail 9):

    L_V = 0.5 * E_t[max((V_t - G_t)^2, (clip(V_t, V_old - eps, V_old + eps) - G_t)^2)].
    Returns (loss, clip fraction).
    """
    clipped_values = old_values + torch.clamp(
        values - old_values, -cliprange_value, cliprange_value
    )
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    clipfrac = masked_mean((loss_clipped > loss_unclipped).to(values.dtype), mask).detach()
    return loss, clipfrac


# ------------------------------------------------------------------------- KL coefficient
class FixedKLController:
    """beta stays at its initial value."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Proportional controller of Ziegler et al. 2019 (sec. 2.2):

    e_t = clip(KL_t / KL_target - 1, -0.2, 0.2);  beta_{t+1} = beta_t (1 + K_beta e_t),
    with K_beta = n_steps / horizon (n_steps = sequences in the rollout).
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return  # a NaN KL would poison beta forever; the run's metrics show the NaN
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
