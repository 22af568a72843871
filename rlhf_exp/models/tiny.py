"""Build the tiny GPT-2-style base (tokenizer + weights) used when `model.name_or_path` is null.

The result is an ordinary Hugging Face checkpoint directory, so every later stage loads it through
the same `from_pretrained` path as a hub model. Building takes a couple of seconds on CPU:

    python -c "from pathlib import Path; from rlhf_exp.config.schema import TinySpec; \
from rlhf_exp.models.tiny import build_tiny_base; \
build_tiny_base(TinySpec(), ['the film was great', 'the plot was dull'] * 500, Path('/tmp/tiny'))"
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_exp.config.schema import TinySpec

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"  # also bos and unk, as in GPT-2
PAD_TOKEN = "<|pad|>"  # distinct from eos: PPO masks pads but must still see the eos it scores

# Single-turn or multi-turn chat. Only assistant turns end in <|endoftext|>, so a one-turn prompt
# holds no eos and "stop at the first eos" stays unambiguous. The {% generation %} block marks the
# assistant tokens for TRL's `assistant_only_loss`; rendering the prompt with
# add_generation_prompt=True gives a prefix of the rendered prompt + completion, which TRL's
# completion-only loss relies on.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'assistant: ' }}"
    "{% generation %}{{ message['content'] + '<|endoftext|>' }}{% endgeneration %}"
    "{% else %}"
    "{{ message['role'] + ': ' + message['content'] + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def train_tokenizer(
    corpus: Iterable[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on `corpus`; ids 0 and 1 are <|endoftext|> and <|pad|>."""
    tok = Tokenizer(models.BPE())
    # Byte-level: every string encodes without an unk, and decode(encode(s)) == s.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # keeps offsets for char_to_token
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        padding_side="right",
        model_max_length=max_length,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_base(spec: TinySpec, corpus: Iterable[str], out_dir: Path, seed: int = 0) -> None:
    """Train a tokenizer on `corpus`, initialise a GPT-2 of shape `spec`, save both to `out_dir`.

    Same corpus and seed give an identical tokenizer and identical weights. The model's vocab is
    the tokenizer's actual size, which is below `spec.vocab_size` when the corpus is too small to
    supply that many merges, unless `spec.exact_vocab` asks for `vocab_size` rows regardless.
    """
    tokenizer = train_tokenizer(corpus, spec.vocab_size, spec.n_positions)
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    config = GPT2Config(
        vocab_size=spec.vocab_size if spec.exact_vocab else len(tokenizer),
        n_positions=spec.n_positions,
        n_embd=spec.n_embd,
        n_layer=spec.n_layer,
        n_head=spec.n_head,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    # fork_rng: seed the init without disturbing the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    model.generation_config.bos_token_id = eos_id
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(out_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "built tiny base: vocab %d (tokenizer %d), %.2fM params -> %s",
        config.vocab_size,
        len(tokenizer),
        n_params / 1e6,
        out_dir,
    )
