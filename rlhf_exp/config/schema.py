"""Typed views of the composed Hydra config, checked before anything heavy loads.

YAML under `conf/` is the source of truth; these dataclasses give it types, ranges and
cross-field rules. `validate(cfg)` turns a composed `DictConfig` into a `RunConfig` or raises
`ConfigError` naming the key, the bad value and what is valid. This module imports torch only
to settle `model.precision=auto` for this machine (in `validate`, so that every later step,
cache keys included, sees the precision the run really uses), and in `check_paths` to scan the
pickle files a path holds without loading them (`model_files.py`).

Range rules live in field metadata: `gt`/`ge`/`lt`/`le` bounds and `choices` (plus `why`, a
reason shown with a broken bound, and `path`, a path whose `~` is expanded; see `_f`). Rules by
type hold for every field without being written down (`_check_rules`): a float must be finite
(`nan` never passes; `inf` only with `allow_inf=True`), and an int without bounds of its own must
fit in int32, what torch, numpy and the tokenizers take. Sizes that a process allocates or loops
over at once (token lengths, batches, generated rows) get tighter caps, `MAX_TOKENS`,
`MAX_BATCH` and `MAX_ROWS`: past them a run does not fail, it allocates until it hangs or is
killed.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import operator
import os
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf_exp.config.data_files import resolve_data_files
from rlhf_exp.config.model_files import (
    CHECKPOINT_COMPLETE,
    kind,
    pickled_weights,
    unsafe_pickles,
)
from rlhf_exp.errors import ConfigError, UserError

log = logging.getLogger(__name__)


# Bounds of every int field that sets none of its own (int32): larger values overflow in
# torch, numpy and the tokenizers, or mean a run that never ends.
INT_MAX = 2**31 - 1
# numpy, which transformers' set_seed seeds, takes seeds in [0, 2**32 - 1].
SEED_RULES: dict[str, Any] = {"ge": 0, "le": 2**32 - 1, "why": "a seed is a 32-bit unsigned int"}
# Caps of what one process holds or generates at once: tokens of one sequence (a 64k context
# is far beyond anything this project runs on CPU), items of one batch or rollout, and rows the
# embedded generator writes. Above these a run allocates until it hangs or is killed.
MAX_TOKENS = 2**16
MAX_BATCH = 2**16
MAX_ROWS = 10**6
MAX_BATCH_TOKENS = 2**24  # padded tokens of one batch: 256 sequences of MAX_TOKENS
TOKENS = "longer sequences would not fit in memory"
BATCH = "larger batches would not fit in memory"
ROWS = "more rows would take hours to generate or score"
HELD_OUT = "one row to train on and one held out"


def _f(default: Any = dataclasses.MISSING, **rules: Any) -> Any:
    """A dataclass field with rules in its metadata: `gt`, `ge`, `lt`, `le`, `choices`,
    `allow_inf`, `why` (shown with a broken bound; `why_low`/`why_high` for one side only)
    and `path` (expand `~`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=rules)
    return field(default=default, metadata=rules)


# ---------------------------------------------------------------------------------- model
@dataclass
class TinySpec:
    """Shape of the GPT-2-style model built from config when `model.name_or_path` is null."""

    # Caps: a "tiny" model past them would not fit in memory or take hours to build.
    n_layer: int = _f(2, ge=1, le=256)
    n_head: int = _f(4, ge=1, le=1024)
    n_embd: int = _f(128, ge=8, le=2**15)
    n_positions: int = _f(128, ge=16, le=MAX_TOKENS, why_high=TOKENS)
    vocab_size: int = _f(2048, ge=300, le=2**18)  # byte-level BPE: the 256 bytes plus merges
    # the model's vocab is vocab_size even when the corpus supplies fewer tokens (the rows
    # past the tokenizer's are never a token): a given shape, e.g. GPT-2 small's 50,257
    exact_vocab: bool = False


@dataclass
class ModelSpec:
    name: str = "tiny"
    name_or_path: str | None = None  # hub id or local dir; null builds the tiny model
    dtype: str = _f("float32", choices=["float32", "bfloat16", "float16"])  # of the weights
    # Compute precision of training and rollouts: fp32, or bf16 autocast (weights and
    # optimiser state stay in `dtype`), or auto: bf16 where the hardware has native bf16
    # (rlhf_exp.hardware), else fp32. fp16 would need a GPU and loss scaling for no gain
    # over bf16 on the hardware that has both.
    precision: str = _f("fp32", choices=["fp32", "bf16", "auto"])
    trust_remote_code: bool = False
    # Weights in pickle files (pytorch_model.bin) load only when this is true: unpickling a
    # file can run code, safetensors cannot (README, Safety). Even then a pickle that holds
    # anything but tensors is refused.
    allow_pickle_weights: bool = False
    lora_target_modules: list[str] = _f(["c_attn", "c_proj", "c_fc"])
    tiny: TinySpec = field(default_factory=TinySpec)
    # Recompute each block's activations in the backward pass instead of keeping them: ~30%
    # more compute for activation memory that no longer grows with the layers (for long
    # sequences on a GPU). Passed to the trainers' args and enabled in our PPO loop.
    gradient_checkpointing: bool = False
    # Attention kernel of `from_pretrained`. auto: SDPA, but the model's eager attention for
    # calls on short bf16 rows on a CPU, where SDPA's backward is slow (`rlhf_exp.attention`);
    # null: transformers' choice (sdpa where supported). flash_attention_2 needs a CUDA GPU and
    # the flash-attn package (checked before loading).
    attn_implementation: str | None = _f(
        "auto", choices=["auto", "eager", "sdpa", "flash_attention_2"]
    )
    # A hub model's branch, tag or commit hash for the model and its tokenizer (a commit pins
    # it: a re-upload under the same name changes nothing). Part of every stage's cache key.
    revision: str | None = None
    # QLoRA (lora=qlora): the base weights in 4-bit NF4 (bitsandbytes), frozen, with LoRA
    # adapters trained on top. Needs a CUDA GPU, bitsandbytes and LoRA.
    load_in_4bit: bool = False


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = _f(16, ge=1, le=2**14)  # beyond any layer's width
    alpha: float = _f(32.0, gt=0)
    dropout: float = _f(0.0, ge=0, lt=1)


# -------------------------------------------------------------------------------- dataset
DATA_SPLITS = ("sft", "sft_eval", "preference", "preference_test", "eval_prompts", "unpaired")


@dataclass
class DatasetSpec:
    name: str = "sentiment"
    source: str = _f("embedded", choices=["embedded", "files", "hub"])
    seed: int = _f(0, **SEED_RULES)
    # Name of a registered reward function that scores completions against ground truth.
    gold_reward: str | None = "vader_sentiment"
    # Rename map applied before normalising, e.g. {accepted: chosen}.
    columns: dict[str, str] = _f({})
    test_fraction: float = _f(0.05, gt=0, lt=1)
    n_eval_prompts: int = _f(256, ge=1, le=MAX_ROWS, why_high=ROWS)
    # embedded generator; at least 2 rows each: one to train on, one held out
    n_sft: int = _f(20000, ge=2, le=MAX_ROWS, why_low=HELD_OUT, why_high=ROWS)
    n_pairs: int = _f(10000, ge=2, le=MAX_ROWS, why_low=HELD_OUT, why_high=ROWS)
    # Gold scores are VADER compounds in [-1, 1]; a margin the generator's pairs almost never
    # reach leaves no pairs (refused with a count when the data is built).
    min_gold_margin: float = _f(0.1, ge=0, lt=2)
    # Token budget of this data's texts: the methods' max_length / max_completion_length (and
    # the tiny model's positions) default to these, so long dialogues get room by default.
    max_length: int = _f(128, ge=8, le=MAX_TOKENS, why_high=TOKENS)
    max_completion_length: int = _f(64, ge=1, le=MAX_TOKENS, why_high=TOKENS)
    # Processes for tokenising (datasets' map num_proc); null: one. Pays off above ~50k rows.
    num_proc: int | None = _f(None, ge=1, le=256)
    # Default of the trainers' method.group_by_length: on for long-tailed lengths (dialogues).
    group_by_length: bool = False
    # Preference labels (rlhf_exp/data/policy_pairs.py): where pairs come from (the data's own
    # pairs, or two samples of the SFT policy per prompt labelled by the gold reward), how many
    # labels every method may use (null: all), and label noise (bt: Bradley-Terry sampled at
    # label_temperature; none: the higher gold score wins).
    pairs: str = _f("generator", choices=["generator", "policy"])
    n_labels: int | None = _f(None, ge=1, le=MAX_ROWS, why_high=ROWS)
    label_noise: str = _f("none", choices=["none", "bt"])
    label_temperature: float = _f(0.1, gt=0, le=100)
    pair_max_new_tokens: int = _f(24, ge=1, le=MAX_TOKENS, why_high=TOKENS)
    # source=files: split name -> a .jsonl/.json/.csv/.parquet file, a directory of them or
    # a glob (data_files.py)
    data_files: dict[str, str] = _f({})
    # source=hub: `datasets.load_dataset(hub_name, hub_subset)` and split name -> hub split
    hub_name: str | None = None
    hub_subset: str | None = None
    # a folder of the hub repo (load_dataset's data_dir), e.g. helpful-base of Anthropic/hh-rlhf
    hub_data_dir: str | None = None
    hub_splits: dict[str, str] = _f({})


# -------------------------------------------------------------------------------- methods
@dataclass
class TrainSpec:
    """Knobs every trainer-backed method shares; names follow transformers' TrainingArguments."""

    # The key of the method's KL knob (DPO's beta, PPO's kl_coef): the x-axis of a frontier.
    KL_KNOB: ClassVar[str | None] = None

    name: str = ""
    learning_rate: float = _f(5e-4, gt=0, le=1)
    num_train_epochs: float = _f(1.0, gt=0, le=10**4, why_high="more would never end")
    max_steps: int = _f(-1, ge=-1)  # -1: num_train_epochs decides
    per_device_train_batch_size: int = _f(32, ge=1, le=MAX_BATCH, why_high=BATCH)
    per_device_eval_batch_size: int = _f(64, ge=1, le=MAX_BATCH, why_high=BATCH)
    # Padded tokens per evaluation batch, at most (fewer rows per batch when they are long;
    # one row always). Held-out scoring by a reward model batches to it too.
    eval_batch_tokens: int = _f(4096, ge=1, le=MAX_BATCH_TOKENS, why_high=BATCH)
    # Padded tokens per training micro-batch, at most: long rows are split into more
    # micro-batches of the same step (per_device_train_batch_size x gradient_accumulation_steps
    # rows per optimiser step either way).
    train_batch_tokens: int = _f(4096, ge=1, le=MAX_BATCH_TOKENS, why_high=BATCH)
    gradient_accumulation_steps: int = _f(1, ge=1, le=MAX_BATCH)
    # Token budget (rlhf_exp/data/tokens.py): prompt + completion <= max_length; a completion
    # keeps its first max(max_completion_length, max_length - prompt) tokens, the prompt its
    # last ones (cut from the left). The YAML takes both from the dataset group.
    max_length: int = _f(128, ge=8, le=MAX_TOKENS, why_high=TOKENS)
    max_completion_length: int = _f(64, ge=1, le=MAX_TOKENS, why_high=TOKENS)
    lr_scheduler_type: str = _f(
        "cosine", choices=["linear", "cosine", "constant", "constant_with_warmup"]
    )
    warmup_ratio: float = _f(0.05, ge=0, lt=1)
    weight_decay: float = _f(0.0, ge=0)
    max_grad_norm: float = _f(1.0, gt=0)
    logging_steps: int = _f(10, ge=1)
    eval_steps: int = _f(100, ge=1)
    save_steps: int = _f(500, ge=1)  # checkpoint (weights, optimiser, RNG) every N steps
    max_eval_samples: int = _f(512, ge=1, le=MAX_ROWS, why_high=ROWS)
    # Batches of similar lengths (less padding; order less random within a few batches).
    group_by_length: bool = False
    # torch.compile the model (transformers' `torch_compile`); pays compile time up front.
    torch_compile: bool = False
    # Any further option of the method's TRL config (e.g. {dataloader_num_workers: 2}); keys
    # are checked against that config before anything loads. Applied last.
    trainer_kwargs: dict[str, Any] = _f({})
    # "module:Class" of the TRL config `trainer_kwargs` feed; None: the method has none.
    TRL_CONFIG: ClassVar[str | None] = None
    # Trains on preference pairs (pref_train, pref_test): before any stage of a run trains,
    # its pairs must survive tokenising and cutting to this method's budget (data/checks.py).
    TRAINS_ON_PAIRS: ClassVar[bool] = False
    # Trains on SFT rows (sft, else the pairs' prompt + chosen): a dataset with neither is
    # refused before any stage trains (data/checks.py).
    TRAINS_ON_SFT_ROWS: ClassVar[bool] = False
    # Trains on the dataset's `unpaired` split when it has one: its rows are normalised (and
    # their labels checked) before any stage trains (data/checks.py).
    TRAINS_ON_UNPAIRED: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_max_steps(self)
        if self.max_completion_length >= self.max_length:
            raise ConfigError(
                "method.max_completion_length",
                self.max_completion_length,
                f"must be < method.max_length={self.max_length} (room for the prompt)",
            )


def check_max_steps(spec: TrainSpec) -> None:
    """0 steps would pass the range check, and transformers would then train by epochs."""
    if spec.max_steps == 0:
        raise ConfigError(
            "method.max_steps", 0, "must be -1 (num_train_epochs decides) or at least 1"
        )


@dataclass
class SFTSpec(TrainSpec):
    TRL_CONFIG: ClassVar[str | None] = "trl:SFTConfig"
    TRAINS_ON_SFT_ROWS: ClassVar[bool] = True

    name: str = "sft"
    learning_rate: float = _f(1e-3, gt=0, le=1)
    completion_only_loss: bool = True
    disable_dropout: bool = False


@dataclass
class RewardSpec(TrainSpec):
    TRL_CONFIG: ClassVar[str | None] = "trl:RewardConfig"
    TRAINS_ON_PAIRS: ClassVar[bool] = True

    name: str = "reward"
    learning_rate: float = _f(1e-3, gt=0, le=1)
    per_device_train_batch_size: int = _f(8, ge=1)  # x4 accumulation: 32 pairs a step
    gradient_accumulation_steps: int = _f(4, ge=1)
    center_rewards_coefficient: float | None = _f(None, ge=0)
    eval_batch_tokens: int = _f(2048, ge=1, le=MAX_BATCH_TOKENS, why_high=BATCH)


def _method_specs() -> dict[str, type[TrainSpec]]:
    """Method name -> its schema: every `TrainSpec` subclass in the `rlhf_exp.config` modules,
    by the default of its `name` field. A method with many knobs keeps its schema in its own
    module (config/<method>.py); nothing here lists them, so adding one edits no list."""
    import importlib
    import pkgutil

    import rlhf_exp.config as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    specs: dict[str, type[TrainSpec]] = {}
    todo = list(TrainSpec.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        name = next(f.default for f in dataclasses.fields(cls) if f.name == "name")
        if not name:  # a shared base, not a method
            continue
        if name in specs and specs[name] is not cls:
            raise TypeError(f"method {name!r} has two schemas: {specs[name]} and {cls}")
        specs[name] = cls
    return dict(sorted(specs.items()))


@dataclass
class EvalMethodSpec(TrainSpec):
    """`method=eval policy_path=DIR`: evaluate a saved policy, no training (the inherited
    training knobs are unused; they exist so presets like debug=fast apply to every method)."""

    name: str = "eval"


@dataclass
class EvalSpec:
    """End-of-run evaluation on the held-out prompts, shared by every policy method."""

    max_new_tokens: int = _f(24, ge=1, le=MAX_TOKENS, why_high=TOKENS)
    temperature: float = _f(1.0, gt=0)
    greedy: bool = True  # also report greedy decoding (eval/greedy/*) next to sampling
    batch_size: int = _f(64, ge=1, le=MAX_BATCH, why_high=BATCH)
    num_prompts: int | None = _f(None, ge=1, le=MAX_ROWS, why_high=ROWS)  # null: every held-out one
    # also score completions with the learned reward model of the same model+dataset (from
    # the artifact cache, trained there first if missing), for eval/rm_reward and win_rate_rm
    reward_model: bool = True


@dataclass
class ObjectiveSpec:
    """The number `run.py` returns to a sweeper (hparams_search/, Optuna), also written to
    metrics.json as `objective`: `metric`, less `kl_penalty` per nat of eval KL (k3) beyond
    `kl_budget`, so a search cannot buy reward with divergence it was not allowed."""

    metric: str | None = None  # a key of metrics.json, e.g. eval/gold_reward; null: no objective
    kl_budget: float | None = _f(None, ge=0)  # null: the metric as it is
    kl_penalty: float = _f(1.0, ge=0)


# ------------------------------------------------------------------------------ run level
@dataclass
class StageSource:
    """Where an upstream stage's artifact comes from: `path`, else the cache (built on a miss)."""

    path: str | None = _f(None, path=True)
    overrides: dict[str, Any] = _f({})  # method keys for that stage, e.g. {max_steps: 200}


@dataclass
class UpstreamSpec:
    seed: int = _f(0, **SEED_RULES)  # shared by upstream stages: a sweep over seeds reuses them
    sft: StageSource = field(default_factory=StageSource)
    reward: StageSource = field(default_factory=StageSource)


@dataclass
class PathsSpec:
    root_dir: str = _f(".", path=True)
    log_dir: str = _f("outputs", path=True)
    output_dir: str = _f("outputs/run", path=True)
    cache_dir: str = _f("outputs/cache", path=True)


@dataclass
class WandbSpec:
    """Weights & Biases (`logger=wandb`); offline unless `mode=online` (README, Logging)."""

    project: str = "rlhf-exp"
    entity: str | None = None  # a team or user; null: the logged-in user's default
    # offline: files under <run dir>/wandb only, uploaded later with `wandb sync`; online
    # streams to the wandb server (after `wandb login`)
    mode: str = _f("offline", choices=["offline", "online"])


@dataclass
class MlflowSpec:
    """MLflow (`logger=mlflow`); a file store in the run dir unless a server is named."""

    # null: file:<run dir>/mlruns (mlflow ui --backend-store-uri <that>); or an http(s) URI
    tracking_uri: str | None = None
    experiment: str = "rlhf-exp"


@dataclass
class LoggerSpec:
    """Where a run's scalars go besides metrics.json; each backend its own key, so presets
    combine (`logger=[tensorboard,csv]`). TensorBoard stays on unless turned off."""

    tensorboard: bool = True
    csv: bool = False  # <run dir>/metrics.csv: one row (step, key, value) per scalar
    wandb: WandbSpec | None = None  # null: off
    mlflow: MlflowSpec | None = None  # null: off


@dataclass
class HubSpec:
    """Opt-in upload of a finished run's `model/` dir (weights, tokenizer, model card) to the
    Hugging Face Hub, by the main process (`rlhf_exp/hub.py`); never on by default."""

    push: bool = False
    repo_id: str | None = None  # "user/name" or "org/name"; required when push is true
    private: bool = True  # a repo this creates is private; an existing repo keeps its setting


@dataclass
class RunConfig:
    seed: int = _f(**SEED_RULES)
    model: ModelSpec
    dataset: DatasetSpec
    method: TrainSpec
    lora: LoraSpec
    paths: PathsSpec
    upstream: UpstreamSpec
    logger: LoggerSpec
    eval: EvalSpec = field(default_factory=EvalSpec)
    objective: ObjectiveSpec = field(default_factory=ObjectiveSpec)
    # "latest" (in this run dir) or a checkpoint dir
    resume_from: str | None = _f(None, path=True)
    overwrite: bool = False  # empty a run dir that holds another run's files
    # torch CPU threads of this run; null: torch's default, which follows OMP_NUM_THREADS
    # (a joblib launcher's workers get cores / n_jobs from joblib)
    threads: int | None = _f(None, ge=1, le=1024)
    # method=eval only: the saved policy to evaluate, and the reference to compare it with
    # (null: the SFT policy of this model+dataset, from the artifact cache)
    policy_path: str | None = _f(None, path=True)
    reference_path: str | None = _f(None, path=True)
    # Modules imported before anything else, so they can register methods (with their
    # TrainSpec schema) and reward functions without editing the package.
    plugins: list[str] = _f([])
    hub: HubSpec = field(default_factory=HubSpec)


# ----------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(err)
        if len(errors) == 1:  # `float | None`: the one type's own reason ("too large", ...)
            raise errors[0]
        raise ConfigError(key, value, "expected " + " or ".join(_type_name(o) for o in options))
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, value, "expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, value, "expected a mapping")
        _, value_tp = typing.get_args(tp)
        return {str(k): _coerce(value_tp, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        _check_nan(value, key)
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:
            raise ConfigError(key, value, "too large for a float") from None
    if tp in (int, float) and isinstance(value, bool):
        raise ConfigError(key, value, f"expected {tp.__name__}")
    if not isinstance(value, tp):
        raise ConfigError(key, value, f"expected {tp.__name__}")
    return value


def _check_nan(value: Any, key: str) -> None:
    """No NaN anywhere in a free-form value (`trainer_kwargs`): it is never a setting."""
    if isinstance(value, float) and math.isnan(value):
        raise ConfigError(key, value, "must be a number, not nan")
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_nan(v, f"{key}[{i}]")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_nan(v, f"{key}.{k}")


_BOUNDS = {
    "gt": (">", operator.gt),
    "ge": (">=", operator.ge),
    "lt": ("<", operator.lt),
    "le": ("<=", operator.le),
}


def type_rules(value: Any, rules: dict[str, Any]) -> dict[str, Any]:
    """`rules` plus the rules every value of `value`'s type obeys (module docstring): an int
    without a lower or upper bound of its own gets int32's."""
    if isinstance(value, int) and not isinstance(value, bool):
        if "ge" not in rules and "gt" not in rules:
            rules = {**rules, "ge": -INT_MAX}
        if "le" not in rules and "lt" not in rules:
            rules = {**rules, "le": INT_MAX, "why_high": "it must fit in int32"}
    return rules


def _check_rules(value: Any, rules: dict[str, Any], key: str) -> None:
    if value is None:
        return
    infinite_ok = rules.get("allow_inf") and isinstance(value, float) and math.isinf(value)
    if isinstance(value, float) and not math.isfinite(value) and not infinite_ok:
        raise ConfigError(key, value, "must be a finite number")
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigError(key, value, f"choose one of {', '.join(map(str, rules['choices']))}")
    rules = type_rules(value, rules)
    for rule, (symbol, holds) in _BOUNDS.items():
        if rule in rules and not holds(value, rules[rule]):
            why = rules.get("why_high" if rule in ("lt", "le") else "why_low", rules.get("why"))
            why = f" ({why})" if why else ""
            raise ConfigError(key, value, f"must be {symbol} {rules[rule]}{why}")


def field_rules(cls: type, name: str) -> dict[str, Any]:
    """Rules of field `name` of dataclass `cls`, merged down its bases: a subclass that only
    changes a default (RewardSpec's batch size) keeps the caps its base set."""
    rules: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            for f in dataclasses.fields(base):
                if f.name == name:
                    rules |= dict(f.metadata)
    return rules


T = typing.TypeVar("T")


def build(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass `cls` from a plain mapping, rejecting unknown keys and bad values."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, data, f"expected a mapping of {cls.__name__} fields")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(key, data[unknown[0]], f"unknown key; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(key, None, "missing required key")
            continue
        value = _coerce(hints[name], data[name], key)
        rules = field_rules(cls, name)
        _check_rules(value, rules, key)
        if rules.get("path") and isinstance(value, str) and value != "latest":
            value = os.path.expanduser(value)  # as every loader does: one path, everywhere
        kwargs[name] = value
    return cls(**kwargs)


def _cross_checks(run: RunConfig) -> None:
    """Rules that span fields or groups."""
    tiny = run.model.tiny
    if run.model.name_or_path is None and tiny.n_embd % tiny.n_head:
        raise ConfigError(
            "model.tiny.n_head", tiny.n_head, f"must divide model.tiny.n_embd={tiny.n_embd}"
        )
    if run.model.name_or_path is None and run.method.max_length > tiny.n_positions:
        raise ConfigError(
            "method.max_length",
            run.method.max_length,
            f"must be <= model.tiny.n_positions={tiny.n_positions}",
        )
    if run.model.name_or_path is None and run.eval.max_new_tokens >= tiny.n_positions:
        raise ConfigError(
            "eval.max_new_tokens",
            run.eval.max_new_tokens,
            f"must be < model.tiny.n_positions={tiny.n_positions} (room for the prompt)",
        )
    if run.method.trainer_kwargs:
        _check_trainer_kwargs(run.method)
    if isinstance(getattr(run.method, "reward", None), str):  # methods that optimise a reward
        from rlhf_exp.rewards import resolve_reward

        resolve_reward(run.method.reward, run.dataset.gold_reward)
    if run.method.name == "eval" and run.policy_path is None:
        raise ConfigError("policy_path", None, "method=eval needs policy_path=<a saved model dir>")
    if run.method.name != "eval":
        for key in ("policy_path", "reference_path"):
            if getattr(run, key) is not None:
                raise ConfigError(key, getattr(run, key), "only method=eval takes it")
    _check_hub(run.hub)
    if run.lora.enabled and not run.model.lora_target_modules:
        raise ConfigError("model.lora_target_modules", [], "list the modules LoRA wraps")
    _check_model_knobs(run)
    data = run.dataset
    if data.source == "files":
        _check_split_map("dataset.data_files", data.data_files, "a file")
    if data.source == "hub":
        if not data.hub_name:
            raise ConfigError(
                "dataset.hub_name", data.hub_name, "name a hub dataset for source=hub"
            )
        _check_split_map("dataset.hub_splits", data.hub_splits, "a hub split")


def _check_hub(hub: HubSpec) -> None:
    if hub.push and not hub.repo_id:
        raise ConfigError(
            "hub.repo_id", hub.repo_id, "hub.push=true needs a repo id like 'user/name'"
        )
    if hub.repo_id is not None and not HUB_REPO_ID.fullmatch(hub.repo_id):
        raise ConfigError(
            "hub.repo_id", hub.repo_id, "expected 'user/name' or 'org/name' (letters, digits, -_.)"
        )


def _check_model_knobs(run: RunConfig) -> None:
    """Model knobs that only make sense together with others; the hardware they need is
    checked by `check_machine`."""
    model = run.model
    if model.load_in_4bit and not run.lora.enabled:
        raise ConfigError(
            "model.load_in_4bit",
            True,
            "4-bit weights cannot be trained directly: use lora=qlora (LoRA adapters on them)",
        )
    if model.revision is not None and model.name_or_path is None:
        raise ConfigError(
            "model.revision", model.revision, "only a hub model has revisions (model=tiny has none)"
        )
    # fp16 weights trained themselves: no loss scaling and no fp32 master copy, so updates
    # underflow and the run diverges (eval/loss 21.9 against 7.1 in fp32, tiny SFT, 2 steps)
    if model.dtype == "float16" and isinstance(run.method, TrainSpec) and not run.lora.enabled:
        raise ConfigError(
            "model.dtype",
            model.dtype,
            "fp16 weights cannot be trained directly: use float32 (model.precision=bf16 or auto "
            "for speed), bfloat16, or LoRA on the fp16 base (lora=default)",
        )


def check_machine(run: RunConfig) -> None:
    """What the config asks of this machine: 4-bit weights and flash attention run only on a
    CUDA GPU with their package. Kept out of `validate`, like `check_paths` (which calls it),
    so that a GPU config composes and validates on any machine."""
    model = run.model
    needs = []
    if model.load_in_4bit:
        needs.append(("model.load_in_4bit", True, "4-bit loading", "bitsandbytes", "bitsandbytes"))
    if model.attn_implementation == "flash_attention_2":
        key, value = "model.attn_implementation", model.attn_implementation
        needs.append((key, value, "flash attention 2", "flash_attn", "flash-attn"))
    if not needs:
        return
    import importlib.util

    import torch

    for key, value, what, module, package in needs:
        missing = []
        if not torch.cuda.is_available():
            missing.append("this machine has no CUDA GPU")
        if importlib.util.find_spec(module) is None:
            missing.append(f"{package} is not installed")
        if missing:
            raise ConfigError(
                key,
                value,
                f"{what} needs a CUDA GPU and {package} (pip install {package}); "
                + " and ".join(missing),
            )
    # flash-attn has no fp32 kernels: without bf16 autocast or half weights it fails mid-run
    flash = model.attn_implementation == "flash_attention_2"
    if flash and model.precision == "fp32" and model.dtype == "float32":
        raise ConfigError(
            "model.attn_implementation",
            model.attn_implementation,
            "flash attention computes in bf16/fp16 only; set model.precision=bf16 "
            "(auto picks it on GPUs with bf16) or model.dtype=bfloat16",
        )


# TRL options that rlhf-exp sets itself (training.trainer_args and the methods' own configs)
# from a knob of another name, or that its own machinery depends on: `method.trainer_kwargs`
# may not set them, or the knob (validated, recorded, swept) would be silently outranked. An
# option named like a field of the method's schema is refused as well ("use method.<it>").
# Options set only as CPU-sane or comparability defaults with no knob of their own
# (dataloader_num_workers, disable_tqdm, use_cpu, top_k, top_p, generation_kwargs, ...) stay
# the user's to change: trainer_kwargs is the only way to reach them.
TRAINER_KWARGS_KNOBS: dict[str, str] = {
    "seed": "seed",
    "data_seed": "seed",
    "bf16": "model.precision",
    "fp16": "model.precision",
    "gradient_checkpointing": "model.gradient_checkpointing",
    "activation_checkpointing": "model.gradient_checkpointing",
    "warmup_steps": "method.warmup_ratio",
    "train_sampling_strategy": "method.group_by_length",
    "max_new_tokens": "method.max_completion_length",
    "resume_from_checkpoint": "resume_from",
    "eval_strategy": "method.eval_steps",
    "save_strategy": "method.save_steps",
    "report_to": "logger",
}
# ... and the options its machinery needs as they are, with the reason.
TRAINER_KWARGS_FIXED: dict[str, str] = {
    "output_dir": "rlhf-exp checkpoints into <run dir>/checkpoints; choose the run dir with "
    "hydra.run.dir",
    "save_total_limit": "rlhf-exp keeps 2 checkpoints, so a resume survives a save cut short",
    "include_num_input_tokens_seen": "rlhf-exp sets it to count the real tokens of "
    "throughput/tokens_*",
}


def _check_trainer_kwargs(spec: TrainSpec) -> None:
    """Every key must be an option of the method's TRL config (imported only when used) that
    no knob sets (the method's schema fields, `TRAINER_KWARGS_KNOBS`) and that
    rlhf-exp does not fix (`TRAINER_KWARGS_FIXED`)."""
    if spec.TRL_CONFIG is None:
        raise ConfigError(
            "method.trainer_kwargs", spec.trainer_kwargs, f"method={spec.name} has no TRL config"
        )
    import importlib

    module, _, name = spec.TRL_CONFIG.partition(":")
    config_cls = getattr(importlib.import_module(module), name)
    valid = {f.name for f in dataclasses.fields(config_cls)}
    own = {f.name for f in dataclasses.fields(spec)}
    for key, value in spec.trainer_kwargs.items():
        if key not in valid:
            raise ConfigError(
                f"method.trainer_kwargs.{key}", value, f"not an option of TRL's {name}"
            )
        knob = f"method.{key}" if key in own else TRAINER_KWARGS_KNOBS.get(key)
        if knob is not None:
            raise ConfigError(f"method.trainer_kwargs.{key}", value, f"{knob} sets it; use {knob}")
        if key in TRAINER_KWARGS_FIXED:
            raise ConfigError(f"method.trainer_kwargs.{key}", value, TRAINER_KWARGS_FIXED[key])


def _check_split_map(key: str, mapping: dict[str, str], target: str) -> None:
    if not mapping:
        raise ConfigError(key, {}, f"map at least one of {', '.join(DATA_SPLITS)} to {target}")
    for split, value in mapping.items():
        if split not in DATA_SPLITS:
            raise ConfigError(
                f"{key}.{split}", value, f"unknown split; valid: {', '.join(DATA_SPLITS)}"
            )


# "gpt2", "org/model-v1.5": a model name that is not a local path is taken as a hub id.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")
# Where hub.push uploads: always namespaced, so the owner of the repo is explicit.
HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def is_hub_id(name: str) -> bool:
    """Whether `name` (that is not a local path) can only mean a model on the hub."""
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
    return not looks_like_path and HUB_ID.fullmatch(name) is not None


def check_paths(run: RunConfig) -> None:
    """Paths the config names must exist (and be what they are used as) before anything loads;
    pickle files they would load must hold only tensors (`model_files.py`); the GPU and
    packages the config needs must be here (`check_machine`). Kept out of `validate` so
    configs can be composed and checked on machines without the data or the GPU."""
    from pathlib import Path

    name = run.model.name_or_path
    if name is not None:
        local = Path(name).expanduser()
        if local.exists() and not local.is_dir():
            raise ConfigError(
                "model.name_or_path", name, f"{kind(local)}; expected a model dir or a hub id"
            )
        if not local.exists() and not is_hub_id(name):
            raise ConfigError(
                "model.name_or_path", name, "a local model dir or a hub id like 'gpt2'"
            )
        if local.is_dir():
            check_model_dir("model.name_or_path", name, run.model.allow_pickle_weights)
        if local.is_dir() and run.model.revision is not None:
            raise ConfigError(
                "model.revision",
                run.model.revision,
                f"only a hub model has revisions; model.name_or_path={name!r} is a local dir",
            )

    for split, value in run.dataset.data_files.items():  # a file, a directory or a glob
        resolve_data_files(f"dataset.data_files.{split}", value)
    for key in ("policy_path", "reference_path"):
        path = getattr(run, key)
        if path is not None:
            _require_dir(key, path, "a saved model dir (with config.json)", "config.json")
            check_model_dir(key, path, run.model.allow_pickle_weights)
    for stage in ("sft", "reward"):
        path = getattr(run.upstream, stage).path
        if path is not None:
            _require_dir(f"upstream.{stage}.path", path, "a saved model dir (with config.json)")
            check_model_dir(f"upstream.{stage}.path", path, run.model.allow_pickle_weights)
    if run.resume_from not in (None, "latest"):
        _require_dir("resume_from", run.resume_from, "'latest' or an existing checkpoint dir")
        check_checkpoint_of("resume_from", run.resume_from, run.method.name)
        _check_pickles("resume_from", run.resume_from, Path(run.resume_from))
    elif run.resume_from == "latest":  # this run dir's checkpoints (trainers' checkpoint-N,
        # PPO's step-N), written by an earlier run of it
        for checkpoint in sorted(Path(run.paths.output_dir).glob("checkpoints/*")):
            if checkpoint.is_dir():
                _check_pickles("resume_from", run.resume_from, checkpoint)
    for key in ("log_dir", "cache_dir"):  # output_dir: Hydra has made it by now
        _check_dir_to_write(f"paths.{key}", getattr(run.paths, key))
    check_machine(run)


def check_checkpoint_of(key: str, value: str, method: str) -> None:
    """`value` must be a complete checkpoint (it holds `CHECKPOINT_COMPLETE`, written last)
    that a run of `method` wrote. A checkpoint lives at `<run dir>/checkpoints/<name>`, and the
    run dir's `config.yaml` names its method; without that file (a checkpoint copied elsewhere)
    the method cannot be told and the checkpoint is taken as it is."""
    from pathlib import Path

    import yaml

    path = Path(value).expanduser()
    if not (path / CHECKPOINT_COMPLETE).is_file():
        raise ConfigError(
            key,
            value,
            f"has no {CHECKPOINT_COMPLETE} marker (not a checkpoint, or one cut short while "
            "saving); expected 'latest' or a complete checkpoint dir "
            "(<run dir>/checkpoints/checkpoint-N or step-N)",
        )
    config_file = path.parent.parent / "config.yaml"
    if path.parent.name != "checkpoints" or not config_file.is_file():
        return
    try:
        config = yaml.safe_load(config_file.read_text())
        written_by = config["method"]["name"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        log.warning("%s: cannot tell which method wrote it (%s: %s)", key, config_file, err)
        return
    if written_by != method:
        raise ConfigError(
            key, value, f"a checkpoint of method={written_by}; this run is method={method}"
        )


def check_run_mode(hydra: Any) -> None:
    """A config that defines a sweep (`hydra.sweeper.params`, e.g. `experiment=ppo_vs_dpo`)
    run without `-m` is refused (`UserError`): Hydra would run a single job of the preset's
    defaults and ignore the sweep. Setting every swept key on the command line names one of its
    jobs, which runs. `hydra`: the run's Hydra config (`HydraConfig.get()`)."""
    from hydra.types import RunMode

    params = list(hydra.sweeper.get("params") or {})
    if hydra.mode != RunMode.RUN or not params:
        return
    given = {item.split("=", 1)[0].lstrip("+~") for item in hydra.overrides.task}
    unset = [key for key in params if key not in given]
    if not unset:
        return
    choices = hydra.runtime.choices
    source = next(
        (f"{g}={choices[g]}" for g in ("experiment", "hparams_search") if choices.get(g)),
        "this config",
    )
    raise UserError(
        f"{source} is a sweep (hydra.sweeper.params: {', '.join(params)}): add -m to run it, "
        f"or set {' and '.join(', '.join(unset).rsplit(', ', 1))} to run one of its jobs"
    )


def _require_dir(key: str, value: str, valid: str, marker: str | None = None) -> None:
    """`value` must be an existing directory (holding `marker`); else say what it is."""
    from pathlib import Path

    path = Path(value).expanduser()
    if not path.is_dir():
        raise ConfigError(key, value, f"{kind(path)}; expected {valid}")
    if marker is not None and not (path / marker).is_file():
        raise ConfigError(key, value, f"has no {marker}; expected {valid}")


def check_model_dir(key: str, value: str, allow_pickle_weights: bool) -> None:
    """A local model dir's weights may load: safetensors, or pickles only with the opt-in and
    only when they hold nothing but tensors."""
    from pathlib import Path

    path = Path(value).expanduser()
    pickles = pickled_weights(path)
    if pickles and not allow_pickle_weights:
        raise ConfigError(
            key,
            value,
            f"its weights are a pickle ({pickles[0].name}) and no .safetensors: refused, "
            "unpickling can run code; convert them to safetensors, or set "
            "model.allow_pickle_weights=true if you trust the file",
        )
    if pickles:
        _check_pickles(key, value, path)


def _check_pickles(key: str, value: str, directory: Any) -> None:
    found = unsafe_pickles(directory)
    if found is not None:
        path, why = found
        raise ConfigError(key, value, f"refused {path}: {why}")


def _check_dir_to_write(key: str, value: str) -> None:
    """`value` is a directory, or can be made one: its nearest existing ancestor is a
    writable directory."""
    from pathlib import Path

    path = Path(value).expanduser().absolute()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(key, value, f"{kind(path)}; expected a directory (made if missing)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(key, value, "is a directory this user cannot write to")
        return
    parent = next(p for p in path.parents if p.exists())
    if not parent.is_dir():
        raise ConfigError(key, value, f"cannot be made: {parent} {kind(parent)}, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(key, value, f"cannot be made: {parent} is not writable by this user")


def method_spec(name: str, data: dict[str, Any], prefix: str = "method") -> TrainSpec:
    """Typed method config for `name`; an unknown name lists the valid ones."""
    specs = _method_specs()
    if name not in specs:
        raise ConfigError(f"{prefix}.name", name, f"choose one of {', '.join(specs)}")
    return build(specs[name], data, prefix)


def _import_plugins(plugins: Any) -> None:
    """Import the user's `plugins` modules (they register methods, schemas, rewards)."""
    import importlib

    plugins = plugins or []
    if not isinstance(plugins, list) or not all(isinstance(p, str) for p in plugins):
        raise ConfigError("plugins", plugins, "expected a list of importable module names")
    for module in plugins:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise ConfigError(
                "plugins", module, f"could not import it ({err}); is its folder on PYTHONPATH?"
            ) from None


def validate(cfg: Any) -> RunConfig:
    """Typed, checked `RunConfig` from a composed `DictConfig` (or a plain dict)."""
    from omegaconf import DictConfig, OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    data = {k: v for k, v in data.items() if k != "hydra"}
    _import_plugins(data.get("plugins"))
    method_data = data.get("method")
    if not isinstance(method_data, dict):
        raise ConfigError("method", method_data, f"choose one of {', '.join(_method_specs())}")
    data["method"] = method_spec(str(method_data.get("name")), method_data)
    for stage in ("sft", "reward"):  # overrides must be real keys of that stage, in range
        overrides = ((data.get("upstream") or {}).get(stage) or {}).get("overrides") or {}
        method_spec(stage, {**overrides, "name": stage}, prefix=f"upstream.{stage}.overrides")
    run = build(RunConfig, {**data, "method": {}}, "")
    run.method = data["method"]
    _cross_checks(run)
    if run.model.precision == "auto":
        from rlhf_exp.hardware import auto_precision

        run.model.precision, reason = auto_precision()
        log.info("model.precision=auto: %s (%s)", run.model.precision, reason)
    return run
