"""PPO's models: the policy and critic behind one module, the reference, and their forwards.

    policy     the SFT policy (`ctx.upstream("sft")`), optionally with LoRA adapters
    critic     a separate value model (a sequence classifier whose scalar head is applied at
               every position), started from the reward model or the SFT policy; or
               `critic=value_head`: a linear head on the policy's last hidden state
    reference  under LoRA the policy itself with adapters disabled (no second copy);
               otherwise a frozen copy of the starting policy

Every model stays in eval mode: dropout would make recomputed log-probs differ from the
rollout's, and the ratio check at the first minibatch would fail for no real reason.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import peft
import torch
from torch import nn

from rlhf_exp.rl import position_ids, token_logprobs, without_last_token


def score_head(model: nn.Module) -> nn.Module:
    """The scalar head of a sequence classifier (`score` for causal-LM families)."""
    for name in ("score", "classifier", "v_head"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no score/classifier head to use as critic")


class PolicyAndValue(nn.Module):
    """One module for the optimiser and `accelerator.prepare` (DDP needs a single forward).

    forward(input_ids, attention_mask, n_response) -> (logits, values) for the response:
    logits (B, R, V) predicting response token t, values (B, R) of the state before it.
    """

    def __init__(self, policy: nn.Module, critic: nn.Module | None, hidden_size: int) -> None:
        super().__init__()
        # FSDP (accelerate's transformer-based wrap) shards the policy's and critic's blocks
        self._no_split_modules = sorted(
            {name for m in (policy, critic) for name in getattr(m, "_no_split_modules", None) or []}
        )
        self.policy = policy
        self.critic = critic  # None: value head on the policy trunk
        self.value_head = nn.Linear(hidden_size, 1) if critic is None else None
        if self.value_head is not None:
            # zero init: V = 0 at the start, so early advantages are the raw rewards
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def tie_weights(self) -> None:
        """Tie the policy's output and input embeddings again: accelerate's FSDP loads the
        weights into a copy on the meta device and then calls this on the root module."""
        for model in (self.policy, self.critic):
            if model is not None:
                model.tie_weights()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ids, attention = without_last_token(input_ids, attention_mask)
        out = self.policy(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids(attention),
            logits_to_keep=n_response,  # the lm_head runs on the response positions only
            output_hidden_states=self.critic is None,
            use_cache=False,
        )
        logits = out.logits  # (B, R, V): position P-1+t predicts response token t
        if self.critic is None:
            hidden = out.hidden_states[-1][:, -n_response:]  # (B, R, H)
            values = self.value_head(hidden).squeeze(-1)
        else:
            values = critic_values(self.critic, input_ids, attention_mask, n_response)
        return logits, values


def critic_values(
    critic: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_response: int
) -> torch.Tensor:
    """The classifier's scalar head applied at every position (not only the last): (B, R)."""
    backbone = getattr(critic, critic.base_model_prefix)
    ids, attention = without_last_token(input_ids, attention_mask)
    hidden = backbone(
        input_ids=ids,
        attention_mask=attention,
        position_ids=position_ids(attention),
        use_cache=False,
    ).last_hidden_state  # (B, T - 1, H)
    return score_head(critic)(hidden[:, -n_response:]).squeeze(-1).float()


class Reference:
    """Log-probs under the frozen starting policy."""

    def __init__(self, policy: nn.Module, lora: bool) -> None:
        self.lora = lora
        self.frozen: nn.Module | None = None  # a copy of the start; None under LoRA
        if not lora:
            self.frozen = copy.deepcopy(policy).eval().requires_grad_(False)

    def to(self, device: torch.device) -> Reference:
        if self.frozen is not None:
            self.frozen.to(device)
        return self

    @contextlib.contextmanager
    def model(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The reference model; under LoRA `policy` itself with its adapters switched off."""
        if self.lora:
            assert isinstance(policy, peft.PeftModel)
            with policy.disable_adapter():
                yield policy
        else:
            yield self.frozen

    def logprobs(
        self,
        policy: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        response_ids: torch.Tensor,
        temperature: float,
        pad_id: int,
    ) -> torch.Tensor:
        with self.model(policy) as ref:
            return token_logprobs(ref, input_ids, attention_mask, response_ids, temperature, pad_id)


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that train (adapters + heads under LoRA; everything otherwise)."""
    return {n: p.detach() for n, p in module.named_parameters() if p.requires_grad}


def hidden_size(model: Any) -> int:
    config = model.config
    return int(getattr(config, "hidden_size", None) or config.n_embd)
