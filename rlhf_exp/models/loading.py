"""Load tokenizers, policies and reward models; wrap them with LoRA (saving: `saving.py`).

Every model, the tiny one included, goes through `from_pretrained`, so a hub id and a local
directory behave the same. Failures a user can fix (missing path, no network, unknown LoRA
targets) become one-line `UserError`s. Try it on a tiny base built by `rlhf_exp.models.tiny`:

    python -c "from rlhf_exp.config.schema import ModelSpec; \
from rlhf_exp.models.loading import load_causal_lm, count_parameters; \
print(count_parameters(load_causal_lm('/tmp/tiny', ModelSpec())))"
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import peft
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import (
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation
from transformers.pytorch_utils import Conv1D

from rlhf_exp import attention
from rlhf_exp.config.model_files import pickled_weights, unsafe_pickles
from rlhf_exp.config.schema import LoraSpec, ModelSpec, is_hub_id
from rlhf_exp.errors import UserError
from rlhf_exp.sharding import loaded_whole

log = logging.getLogger(__name__)

PAD_TOKEN = "<|pad|>"
TASK_TYPES = ("CAUSAL_LM", "SEQ_CLS")
# Layer types peft's LoRA can wrap: what `model.lora_target_modules` may name.
LINEAR = (nn.Linear, Conv1D)  # Conv1D: GPT-2's transposed linear layer
LORA_LAYER_TYPES = (*LINEAR, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d)

T = TypeVar("T")
# GELU's tanh approximation written as eight tensor ops (GPT-2's "gelu_new", "gelu_fast"): the
# same function as torch's one fused kernel, which saves one tensor for backward, not five.
COMPOSED_GELU_TANH = (NewGELUActivation, FastGELUActivation)


# ---------------------------------------------------------------------------------- loading
def _resolve(name_or_path: str) -> str:
    """A local dir (with `~` expanded) as is; a hub id unchanged; anything else is an error."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return str(path)
    if not is_hub_id(name_or_path):
        raise UserError(
            f"model.name_or_path={name_or_path!r} does not exist "
            "(a local model dir or a hub id like 'gpt2')"
        )
    return name_or_path


def _cause_chain(err: BaseException) -> list[BaseException]:
    """`err` and everything it was raised from; transformers wraps hub errors in a plain OSError."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        chain.append(err)
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return chain


def _first_line(err: BaseException, limit: int = 120) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_error(name: str, err: BaseException, is_local: bool) -> UserError:
    """One-line `UserError` for a failed `from_pretrained(name)`."""
    if is_local:
        return UserError(
            f"could not load model.name_or_path={name!r}: {_first_line(err)} "
            "(expected a dir written by save_pretrained, with config.json and weights)"
        )
    chain = _cause_chain(err)

    def found(*types: type[BaseException]) -> BaseException | None:
        return next((e for e in chain if isinstance(e, types)), None)

    # Order matters: GatedRepoError is a RepositoryNotFoundError.
    if found(GatedRepoError):
        return UserError(
            f"model {name!r} is gated on the hub: accept its terms on huggingface.co and log in "
            "(hf auth login), or use a local dir via model.name_or_path=PATH"
        )
    if found(RepositoryNotFoundError):
        return UserError(
            f"model {name!r} was not found on the hub (no such repository, or it is private); "
            "use a hub id like 'gpt2' or a local dir via model.name_or_path=PATH"
        )
    if found(RevisionNotFoundError):
        return UserError(f"model {name!r}: revision not found on the hub ({_first_line(err)})")
    unreachable = (OfflineModeIsEnabled, LocalEntryNotFoundError, ConnectionError, TimeoutError)
    if found(*unreachable) or "couldn't connect" in str(err):
        if hub_constants.is_offline_mode():
            reason = "HF_HUB_OFFLINE is set"
        else:
            reason = _first_line(chain[-1], limit=80)
        return UserError(
            f"could not load model {name!r} from the hub: no network access or not cached "
            f"({reason}); use a local dir via model.name_or_path=PATH"
        )
    return UserError(f"could not load model {name!r} from the hub: {_first_line(err)}")


def _check_weights(source: str, spec: ModelSpec) -> None:
    """A local dir's pickled weights load only with `model.allow_pickle_weights` and only when
    they hold nothing but tensors (rlhf_exp/config/model_files.py); one line otherwise."""
    path = Path(source)
    if not path.is_dir():
        return
    pickles = pickled_weights(path)
    if pickles and not spec.allow_pickle_weights:
        raise UserError(
            f"refused {pickles[0]}: the model's weights are a pickle and there is no "
            ".safetensors (unpickling can run code); convert them to safetensors, or set "
            "model.allow_pickle_weights=true if you trust the file"
        )
    found = unsafe_pickles(path) if pickles else None
    if found is not None:
        raise UserError(f"refused {found[0]}: {found[1]}")


def _from_pretrained(
    load: Callable[..., T], name_or_path: str, spec: ModelSpec, weights: bool = False, **kwargs
) -> T:
    """`load(name_or_path, ...)` with user-fixable failures turned into one-line `UserError`s.

    `weights`: `load` reads model weights, so pickled ones are refused without
    `model.allow_pickle_weights` (a hub repo with only `.bin` weights fails to load).
    """
    source = _resolve(name_or_path)
    if spec.revision is not None and not Path(source).exists():
        # only the hub has revisions; local dirs (cached stages, saved runs) are what they are
        kwargs["revision"] = spec.revision
    if weights:
        _check_weights(source, spec)
        if not spec.allow_pickle_weights:
            kwargs["use_safetensors"] = True
    try:
        with loaded_whole():
            return load(source, trust_remote_code=spec.trust_remote_code, **kwargs)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused a file
        files = ", ".join(p.name for p in pickled_weights(Path(source))) or "a pickle file"
        raise UserError(
            f"refused {name_or_path!r} ({files}): it holds objects other than tensors, which "
            f"torch loads only by running code ({_first_line(err, limit=80)})"
        ) from None
    except (OSError, ValueError) as err:
        # Hub and connection errors arrive as OSErrors; a dir without a usable config.json as a
        # ValueError ("Unrecognized model"), as does a model that needs trust_remote_code.
        if isinstance(err, ValueError) and "trust_remote_code" in str(err):
            raise UserError(
                f"model {name_or_path!r} ships its own code: set model.trust_remote_code=true "
                "if you trust it"
            ) from err
        is_local = Path(source).exists()
        if isinstance(err, ValueError) and not is_local:
            raise
        raise _hub_error(name_or_path, err, is_local=is_local) from err


def load_tokenizer(
    name_or_path: str, spec: ModelSpec, padding_side: str = "right"
) -> PreTrainedTokenizerBase:
    """Tokenizer for `name_or_path`, with a pad token distinct from eos.

    Hub GPT-2 and many other causal LMs ship no pad token, and the common fix (pad = eos) makes
    padding and the real end of a completion indistinguishable, which breaks PPO's masks and a
    reward model that scores the last non-pad token. So a missing (or eos-aliased) pad becomes a
    new `<|pad|>` special token; `load_causal_lm` / `load_reward_model` given this tokenizer grow
    the embeddings to match. The new row is never a training target, so it stays harmless.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: choose 'left' or 'right'")
    tokenizer = _from_pretrained(
        AutoTokenizer.from_pretrained, name_or_path, spec, padding_side=padding_side
    )
    pad_id = tokenizer.pad_token_id
    if pad_id is None or pad_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        log.info(
            "tokenizer %r had %s; added %s (id %d) as a distinct pad token",
            name_or_path,
            "no pad token" if pad_id is None else "pad == eos",
            PAD_TOKEN,
            tokenizer.pad_token_id,
        )
    return tokenizer


def _match_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None) -> None:
    """Grow the embeddings to the tokenizer's vocab and copy its pad id into the configs."""
    if tokenizer is None:
        return
    n_embed = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > n_embed:  # never shrink: many models pad their vocab on purpose
        model.resize_token_embeddings(len(tokenizer))
        log.info("resized token embeddings %d -> %d to fit the tokenizer", n_embed, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def model_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """`from_pretrained` arguments of a model (not its tokenizer) from the model group."""
    kwargs: dict[str, Any] = {"dtype": getattr(torch, spec.dtype)}
    if spec.attn_implementation == "auto":
        attention.register()
        kwargs["attn_implementation"] = attention.NAME
    elif spec.attn_implementation is not None:
        kwargs["attn_implementation"] = spec.attn_implementation
    if spec.load_in_4bit:
        from transformers import BitsAndBytesConfig

        # QLoRA's recipe: NF4 with double quantisation; matmuls in the training precision
        compute = torch.bfloat16 if spec.precision == "bf16" else getattr(torch, spec.dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute,
        )
    return kwargs


def fuse_gelu_tanh(model: nn.Module) -> None:
    """Compute GELU's tanh approximation with torch's fused kernel where the model composes it
    from tensor ops.

    The same function (transformers' `GELUTanh` is documented as equivalent, up to rounding),
    so the config keeps its name and a saved checkpoint is the architecture as loaded. A bf16
    LoRA step at GPT-2 small's shape peaks 50-540 MB lower (benchmarks/NOTES.md, "GPT-2's
    GELU as one fused kernel").
    """
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) in COMPOSED_GELU_TANH:
                setattr(parent, name, GELUTanh())


def _prepared(model: PreTrainedModel, spec: ModelSpec) -> PreTrainedModel:
    """A loaded model ready to train: fused GELU, and a 4-bit model made trainable under LoRA
    (peft: frozen base, norms in fp32). Gradient checkpointing is left to the trainers' args
    and `enable_gradient_checkpointing`."""
    fuse_gelu_tanh(model)
    if not spec.load_in_4bit:
        return model
    return peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def load_causal_lm(
    name_or_path: str, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase | None = None
) -> PreTrainedModel:
    """Causal LM in `spec.dtype`; pass the tokenizer from `load_tokenizer` to match its vocab."""
    model = _from_pretrained(
        AutoModelForCausalLM.from_pretrained, name_or_path, spec, weights=True, **model_kwargs(spec)
    )
    _match_tokenizer(model, tokenizer)
    return _prepared(model, spec)


def load_reward_model(
    name_or_path: str, spec: ModelSpec, tokenizer: PreTrainedTokenizerBase | None = None
) -> PreTrainedModel:
    """Scalar-head sequence classifier (num_labels=1) with `config.pad_token_id` set.

    The pad id matters: the head scores the last non-pad token of each row. From a causal-LM
    checkpoint the `score` head starts untrained (transformers reports it as missing).
    """
    model = _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        name_or_path,
        spec,
        weights=True,
        num_labels=1,
        **model_kwargs(spec),
    )
    _match_tokenizer(model, tokenizer)
    if model.config.pad_token_id is None:
        raise ValueError(
            f"{name_or_path!r} has no pad_token_id: pass the tokenizer from load_tokenizer"
        )
    return _prepared(model, spec)


def enable_gradient_checkpointing(module: nn.Module) -> None:
    """Gradient checkpointing (`model.gradient_checkpointing`) for a training loop of our own
    (PPO) on every transformers model inside `module`; the trainers enable it from their args.

    transformers checkpoints a layer only in training mode, and our loop keeps its models in
    eval mode (dropout would break PPO's ratios), so each checkpointed layer is put in training
    mode for the span of its own forward: that flag decides checkpointing and nothing else,
    dropout lives in child modules that stay in eval mode. Without gradients (rollouts,
    evaluation) layers run as usual, the KV cache included.
    """
    from transformers.modeling_layers import GradientCheckpointingLayer

    done: set[int] = set()
    for model in module.modules():
        if isinstance(model, PreTrainedModel) and id(model) not in done:
            # transformers 5.x renamed it; the old name warns and goes away in 6
            enable = getattr(model, "activation_checkpointing_enable", None)
            enable = enable or model.gradient_checkpointing_enable
            # non-reentrant: correct with frozen inputs (LoRA) without enable_input_require_grads
            enable({"use_reentrant": False})
            done.update(id(m) for m in model.modules())
    if not done:
        raise ValueError(f"{type(module).__name__} holds no transformers model to checkpoint")
    for layer in module.modules():
        if isinstance(layer, GradientCheckpointingLayer):
            layer.register_forward_pre_hook(_checkpoint_mode_on)
            layer.register_forward_hook(_checkpoint_mode_off)


def _checkpoint_mode_on(layer: nn.Module, args: Any) -> None:
    layer._mode_before_checkpoint = layer.training
    layer.training = True


def _checkpoint_mode_off(layer: nn.Module, args: Any, output: Any) -> None:
    layer.training = layer._mode_before_checkpoint


# --------------------------------------------------------------------------------------- LoRA
def linear_layer_names(model: nn.Module) -> list[str]:
    """Leaf names of the Linear/Conv1D layers, e.g. ['c_attn', 'c_fc', 'c_proj', 'lm_head'].

    These are the usual LoRA targets; embeddings and convolutions are accepted but not listed.
    """
    leaves = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, LINEAR)}
    return sorted(leaves)


def _matching_modules(model: nn.Module, target: str) -> list[nn.Module]:
    # peft's rule for a list entry: the full module name equals it or ends with "." + it.
    return [
        m
        for name, m in model.named_modules()
        if (name == target or name.endswith("." + target)) and isinstance(m, LORA_LAYER_TYPES)
    ]


def lora_config(
    spec: ModelSpec, lora: LoraSpec, task_type: str, model: nn.Module | None = None
) -> peft.LoraConfig | None:
    """peft `LoraConfig` from the model and lora groups; None when LoRA is disabled.

    Given `model`, the targets are checked against it and `fan_in_fan_out` is set for GPT-2's
    Conv1D layers (peft would otherwise flip it with a warning). For SEQ_CLS peft adds the
    `score`/`classifier` head to `modules_to_save`, so the freshly initialised head trains fully.
    """
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type={task_type!r}: choose one of {', '.join(TASK_TYPES)}")
    if not lora.enabled:
        return None
    targets = list(spec.lora_target_modules)  # plain list: peft must not see an OmegaConf list
    fan_in_fan_out = False
    if model is not None:
        matched = {t: _matching_modules(model, t) for t in targets}
        missing = [t for t, mods in matched.items() if not mods]
        if missing:
            raise UserError(
                f"model.lora_target_modules={targets!r}: {missing!r} not found in the model; "
                f"linear layers in the model: {', '.join(linear_layer_names(model))}"
            )
        layers = [m for mods in matched.values() for m in mods]
        fan_in_fan_out = all(isinstance(m, Conv1D) for m in layers)
    return peft.LoraConfig(
        task_type=task_type,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        fan_in_fan_out=fan_in_fan_out,
    )


def apply_lora(
    model: PreTrainedModel, spec: ModelSpec, lora: LoraSpec, task_type: str
) -> peft.PeftModel | PreTrainedModel:
    """`model` wrapped with LoRA adapters (base weights frozen), or unchanged when disabled."""
    config = lora_config(spec, lora, task_type, model=model)
    if config is None:
        return model
    wrapped = peft.get_peft_model(model, config)
    trainable, total = count_parameters(wrapped)
    log.info("LoRA (%s): %d of %d parameters trainable", task_type, trainable, total)
    return wrapped


# ------------------------------------------------------------------------------------- counts
def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return trainable, sum(p.numel() for p in params)
