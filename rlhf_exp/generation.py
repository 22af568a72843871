"""Batched sampling from a causal LM with the KV cache, truncated at the first EOS.

    rollout = generate(model, tokenizer, ["I watched Heat and"], max_new_tokens=24)
    rollout.texts            # decoded responses, EOS and padding stripped

Prompts keep their last `max_prompt_length` tokens (at most the model's positions minus
`max_new_tokens`: the end of a long dialogue is what the reply answers, and a longer prompt
would run past the position embeddings), and are left-padded so every row's response starts
at the same column. A response is
every token up to and including its first EOS; later positions hold PAD and are masked out.
PAD is never sampled (its logit is suppressed) and is distinct from EOS, so masks built from
`response_mask` never confuse the two. Sampling is pure temperature sampling (no top-k/top-p
unless asked), so log-probs recomputed at the same temperature match the sampling policy.
With `return_logprobs=True` the rollout also carries the log-prob and entropy of every sampled
token under the distribution it was drawn from (after temperature and PAD suppression), read
from the generation scores, so RL needs no extra policy forward pass. On a CPU each token is
drawn by `draw_by_race`, torch's own exponential race from faster random numbers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import torch
from transformers import GenerationConfig

from rlhf_exp.data.tokens import fit_prompts
from rlhf_exp.errors import UserError
from rlhf_exp.hardware import frozen_weight_casts_cached
from rlhf_exp.rl import entropy_of, logprobs_of
from rlhf_exp.sharding import is_sharded


@dataclass
class Rollout:
    prompt_ids: torch.Tensor  # (B, P) left-padded
    prompt_mask: torch.Tensor  # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, R) PAD after the first EOS
    response_mask: torch.Tensor  # (B, R) 1 on response tokens, the EOS included
    texts: list[str]  # decoded responses, special tokens stripped
    ended: torch.Tensor  # (B,) bool: the response contains an EOS
    logprobs: torch.Tensor | None = None  # (B, R) of the sampled tokens; 0 after the EOS
    entropy: torch.Tensor | None = None  # (B, R) of the sampling distribution; 0 after the EOS

    @property
    def input_ids(self) -> torch.Tensor:
        """(B, P + R) prompt and response side by side, for a forward pass."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)


def truncate_after_eos(
    response_ids: torch.Tensor, eos_id: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids with PAD after the first EOS, mask of kept tokens, whether an EOS occurred)."""
    is_eos = response_ids == eos_id
    # tokens strictly after the first EOS: some EOS appears at an earlier position
    after_eos = (is_eos.cumsum(dim=1) - is_eos.long()) > 0
    mask = ~after_eos
    return response_ids.masked_fill(after_eos, pad_id), mask.long(), is_eos.any(dim=1)


def _pad_to(t: torch.Tensor, width: int, value: int, left: bool) -> torch.Tensor:
    pad = t.new_full((t.shape[0], width - t.shape[1]), value)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    batch_size: int = 64,
    max_prompt_length: int | None = None,
    return_logprobs: bool = False,
) -> Rollout:
    """Sample one response per prompt; see the module docstring for the layout."""
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    if pad_id is None or pad_id == eos_id:
        raise ValueError(
            "generation needs a PAD token distinct from EOS (see models.load_tokenizer)"
        )
    device = next(model.parameters()).device
    config = sampling_config(
        tokenizer, max_new_tokens, temperature, greedy, top_k, top_p, return_logprobs
    )
    room = max_positions(model) - max_new_tokens
    if room < 1:
        raise UserError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the model's "
            f"{max_positions(model)} positions; ask for fewer new tokens"
        )
    if max_prompt_length is None or max_prompt_length > room:
        max_prompt_length = room  # a longer prompt would run past the position embeddings
    prompt_ids = fit_prompts(tokenizer, prompts, max_prompt_length)
    was_training = model.training
    model.eval()
    chunks = []
    # sliced weights (FSDP, ZeRO-3): every rank steps until all are done, as each step
    # gathers; whole ones (inside `sharding.whole_weights`) need no other rank, whatever
    # transformers infers
    synced = is_sharded(model)
    try:
        with frozen_weight_casts_cached(model):
            for start in range(0, len(prompts), batch_size):
                enc = tokenizer.pad(
                    {"input_ids": prompt_ids[start : start + batch_size]},
                    padding=True,
                    padding_side="left",
                    return_tensors="pt",
                ).to(device)
                with one_draw_per_row_by_race():
                    out = model.generate(**enc, generation_config=config, synced_gpus=synced)
                sequences = out.sequences if return_logprobs else out
                response = sequences[:, enc["input_ids"].shape[1] :]
                stats = _token_stats(out.scores, response) if return_logprobs else None
                chunks.append((enc["input_ids"], enc["attention_mask"], response, stats))
    finally:
        model.train(was_training)

    width_p = max(c[0].shape[1] for c in chunks)
    width_r = max(c[2].shape[1] for c in chunks)
    prompt_ids = torch.cat([_pad_to(c[0], width_p, pad_id, left=True) for c in chunks])
    prompt_mask = torch.cat([_pad_to(c[1], width_p, 0, left=True) for c in chunks])
    raw = torch.cat([_pad_to(c[2], width_r, pad_id, left=False) for c in chunks])
    response_ids, response_mask, ended = truncate_after_eos(raw, eos_id, pad_id)
    texts = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    rollout = Rollout(prompt_ids, prompt_mask, response_ids, response_mask, texts, ended)
    if return_logprobs:
        keep = response_mask.bool()
        for i, name in enumerate(("logprobs", "entropy")):
            values = torch.cat([_pad_to(c[3][i], width_r, 0, left=False) for c in chunks])
            setattr(rollout, name, values.masked_fill(~keep, 0.0))
    return rollout


_torch_multinomial = torch.multinomial


_ROWS_PER_DRAW = 8  # 8 x 50,257 float64 exponentials stay in cache; a whole batch's would not


def draw_by_race(
    probs: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor | None:
    """One index per row of `probs` (B, V), as `torch.multinomial(probs, 1)` draws it on a CPU:
    the largest `probs[i] / E[i]` with independent E ~ Exp(1) wins (an exponential race: index
    i first with probability `probs[i] / sum`), the exponentials -log(U) of float64 uniforms.

    A race, not the inverse CDF, because the evaluation samples a policy and its reference from
    one seed: two close distributions racing the same exponentials mostly pick the same
    token, so their difference is measured with less noise. None if a row is not a
    distribution (negative, inf, nan, all zero)."""
    drawn = []
    for rows in probs.split(_ROWS_PER_DRAW):
        total = rows.sum(dim=-1, dtype=torch.float64)
        if not bool(torch.isfinite(total).all() and (total > 0).all() and (rows >= 0).all()):
            return None
        # U in [0, 1): E in (0, inf], never 0, so a zero entry's ratio is 0 and never wins
        exponentials = torch.rand(rows.shape, dtype=torch.float64, generator=generator)
        exponentials.log_().neg_()
        drawn.append(torch.div(rows, exponentials).argmax(dim=-1, keepdim=True))
    return torch.cat(drawn)


def _multinomial(
    input: torch.Tensor,
    num_samples: int,
    replacement: bool = False,
    *,
    generator: torch.Generator | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    if (
        num_samples == 1
        and out is None
        and input.dim() == 2
        and input.device.type == "cpu"
        and input.is_floating_point()
        and input.shape[-1] > 0
    ):
        drawn = draw_by_race(input, generator)
        if drawn is not None:  # else torch's own raises its error
            return drawn
    return _torch_multinomial(input, num_samples, replacement, generator=generator, out=out)


@contextlib.contextmanager
def one_draw_per_row_by_race() -> Iterator[None]:
    """Inside, `torch.multinomial(probs, 1)` on a CPU draws by `draw_by_race`: transformers
    samples each token with it, and torch's CPU kernel spends ~17 ns on each exponential
    (58 ms a step for 64 rows x 50,257 against ~21 ms; benchmarks/NOTES.md). The same race
    from the same global RNG, so seeded runs repeat; other calls (GPUs, several samples,
    `out=`) go to torch's own."""
    with mock.patch.object(torch, "multinomial", _multinomial):
        yield


def sampling_config(
    tokenizer: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    greedy: bool = False,
    top_k: int = 0,
    top_p: float = 1.0,
    return_logprobs: bool = False,
) -> GenerationConfig:
    """`generate`'s sampling: EOS ends a row, PAD is never sampled, KV cache on; with
    `return_logprobs` the processed scores come back so log-probs need no extra forward."""
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=not greedy,
        temperature=temperature if not greedy else None,
        top_k=top_k if not greedy else None,
        top_p=top_p if not greedy else None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=[tokenizer.pad_token_id],
        use_cache=True,
        return_dict_in_generate=return_logprobs,
        output_scores=return_logprobs,
    )


def max_positions(model: Any) -> int:
    """How many tokens the model can attend over (prompt + generated), from its config."""
    config = model.config
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 10**9  # e.g. rotary-only configs without a stated limit


def _token_stats(
    scores: Sequence[torch.Tensor], response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob of each sampled token, entropy of its distribution), both (B, R).

    `scores` are the processed logits the sampler drew from, one (B, V) tensor per step, so
    these are exactly the sampling policy's numbers. One step at a time keeps memory at
    O(B * V) on top of what `generate` already holds.
    """
    logps, entropies = [], []
    for t, step_scores in enumerate(scores):
        logits = step_scores.float()  # (B, V); suppressed tokens are -inf and contribute 0
        logps.append(logprobs_of(logits, response[:, t]))
        entropies.append(entropy_of(logits))
    return torch.stack(logps, dim=1), torch.stack(entropies, dim=1)
