"""The README.md model card of a run's saved `model/` dir: what the model is, what it was
trained on and how, how it scored, and how to load it.

    write_model_card(run_dir / "model", run, metrics, upstream=("sft", "reward"))

Written by the runner after a run (`runner._publish`), so the run dir, its cache entry and a
hub upload (`hub.push`) carry the same card. The card is built from the validated config and
`metrics.json` only; it loads no model (`architecture` is read from the dir's config.json).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rlhf_exp.artifacts import atomic_write_text
from rlhf_exp.config.schema import RunConfig, is_hub_id

# Metric families that describe the model; data/, time/, memory/, throughput/ describe the run.
CARD_METRICS = ("train/", "eval/")


def write_model_card(
    model_dir: Path, run: RunConfig, metrics: Mapping[str, Any], upstream: Sequence[str] = ()
) -> Path:
    """Write `model_dir/README.md` for the model `run` saved there; returns its path."""
    config_file = Path(model_dir) / "config.json"
    architectures = json.loads(config_file.read_text()).get("architectures") or [None]
    card = model_card(run, metrics, architectures[0], upstream)
    path = Path(model_dir) / "README.md"
    atomic_write_text(path, card)
    return path


def model_card(
    run: RunConfig,
    metrics: Mapping[str, Any],
    architecture: str | None = None,
    upstream: Sequence[str] = (),
) -> str:
    """The card's Markdown (with the hub's YAML metadata block first)."""
    reward_model = (architecture or "").endswith("ForSequenceClassification")
    method = run.method.name
    sections = [
        _metadata(run, reward_model),
        f"# {_title(method, reward_model)} (rlhf-exp)",
        _summary(run, upstream),
        "## Training config\n\n" + _config_table(run),
        f"Every key of `method={method}`:\n\n```yaml\n{_yaml(dataclasses.asdict(run.method))}```",
        "## Final metrics\n\n" + _metrics_table(metrics),
        "## How to load\n\n" + _loading(reward_model),
    ]
    return "\n\n".join(sections).rstrip() + "\n"


def _metadata(run: RunConfig, reward_model: bool) -> str:
    """The hub's front matter; `base_model` and `datasets` only when they name hub repos (a
    local path there would fail the hub's metadata check)."""
    meta: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification" if reward_model else "text-generation",
        "tags": ["rlhf-exp", run.method.name, *(["reward-model"] if reward_model else [])],
    }
    base = _hub_base_model(run)
    if base is not None:
        meta["base_model"] = base
    if run.dataset.source == "hub" and run.dataset.hub_name:
        meta["datasets"] = [run.dataset.hub_name]
    return f"---\n{_yaml(meta)}---"


def _hub_base_model(run: RunConfig) -> str | None:
    name = run.model.name_or_path
    if name is None or Path(name).expanduser().exists() or not is_hub_id(name):
        return None
    return name


def _summary(run: RunConfig, upstream: Sequence[str]) -> str:
    lines = [f"- **Base model:** {_base_model(run)}", f"- **Dataset:** {_dataset(run)}"]
    lines.append(f"- **Method:** `{run.method.name}`{_knob(run)}")
    for stage in upstream:
        source = getattr(run.upstream, stage).path
        where = (
            f"`{source}` (`upstream.{stage}.path`)"
            if source
            else f"the artifact cache (`method={stage}`, `upstream.seed={run.upstream.seed}`)"
        )
        lines.append(f"- **Upstream stage `{stage}`:** {where}")
    return "\n".join(lines)


def _base_model(run: RunConfig) -> str:
    name = run.model.name_or_path
    if name is None:
        tiny = run.model.tiny
        return (
            f"a tiny GPT-2 built from scratch by rlhf-exp (`model={run.model.name}`: "
            f"n_layer={tiny.n_layer}, n_head={tiny.n_head}, n_embd={tiny.n_embd}, "
            f"vocab_size={tiny.vocab_size}), with a byte-level BPE tokenizer trained on the task"
        )
    if _hub_base_model(run) is not None:
        return f"[{name}](https://huggingface.co/{name})"
    return f"`{name}` (a local model dir)"


def _dataset(run: RunConfig) -> str:
    data = run.dataset
    if data.source == "embedded":
        what = (
            f"`{data.name}`, generated offline by rlhf-exp (dataset.seed={data.seed}, "
            f"n_sft={data.n_sft}, n_pairs={data.n_pairs})"
        )
    elif data.source == "hub":
        subset = f" (subset `{data.hub_subset}`)" if data.hub_subset else ""
        what = f"[{data.hub_name}](https://huggingface.co/datasets/{data.hub_name}){subset}"
    else:  # local files: their names, not the paths of the machine that trained it
        files = ", ".join(f"{split}: `{Path(v).name}`" for split, v in data.data_files.items())
        what = f"`{data.name}`, local files ({files})"
    gold = f"; gold reward `{data.gold_reward}`" if data.gold_reward else ""
    return what + gold


def _knob(run: RunConfig) -> str:
    knob = type(run.method).KL_KNOB
    return f" ({knob}={getattr(run.method, knob)})" if knob else ""


def _config_table(run: RunConfig) -> str:
    lora = run.lora
    if lora.enabled:
        targets = ", ".join(run.model.lora_target_modules)
        lora_text = (
            f"r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout} on {targets}; merged into "
            "the saved weights"
        )
    else:
        lora_text = "off (full fine-tuning)"
    spec = run.method
    rows = [
        ("method", f"`{spec.name}`{_knob(run)}"),
        ("learning rate", spec.learning_rate),
        ("steps", spec.max_steps if spec.max_steps > 0 else f"{spec.num_train_epochs} epoch(s)"),
        ("batch", f"{spec.per_device_train_batch_size} x {spec.gradient_accumulation_steps}"),
        ("LoRA", lora_text),
        ("seed", f"{run.seed} (upstream stages: {run.upstream.seed})"),
        ("precision", f"{run.model.precision} compute, {run.model.dtype} weights"),
        ("max length", f"{spec.max_length} tokens ({spec.max_completion_length} completion)"),
    ]
    return _table(("key", "value"), rows)


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [
        (f"`{key}`", _number(value))
        for key, value in metrics.items()
        if key.startswith(CARD_METRICS) and isinstance(value, (int, float))
    ]
    if "objective" in metrics and metrics["objective"] is not None:
        rows.append(("`objective`", _number(metrics["objective"])))
    if not rows:
        return "No train/ or eval/ metrics were recorded."
    return _table(("metric", "value"), rows) + "\n\nEvery metric: the run dir's `metrics.json`."


def _loading(reward_model: bool) -> str:
    if reward_model:
        return (
            "A sequence-classification model with one output, the reward (safetensors weights, "
            "no remote code):\n\n"
            "```python\nimport torch\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            'model = AutoModelForSequenceClassification.from_pretrained("PATH_OR_REPO")\n'
            'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")\n'
            "# as it was trained: prompt and completion tokenised apart, the completion ending "
            "in EOS\n"
            'ids = tokenizer("The film was")["input_ids"] + tokenizer(" great.")["input_ids"]\n'
            "ids.append(tokenizer.eos_token_id)\n"
            "reward = model(torch.tensor([ids])).logits[0, 0].item()\n```"
        )
    return (
        "A plain causal LM (LoRA adapters, if any, are merged in; safetensors weights, no "
        "remote code):\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        'model = AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")\n'
        'tokenizer = AutoTokenizer.from_pretrained("PATH_OR_REPO")\n'
        'inputs = tokenizer("The film was", return_tensors="pt")\n'
        "out = model.generate(**inputs, max_new_tokens=24, do_sample=True)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))\n```"
    )


def _table(header: tuple[str, str], rows: Sequence[tuple[Any, Any]]) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in rows]
    return "\n".join(lines)


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _yaml(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False, default_flow_style=False)


def _title(method: str, reward_model: bool) -> str:
    """`sft policy`, `dpo policy`, `reward model` (the method is already the kind)."""
    if not reward_model:
        return f"{method} policy"
    return "reward model" if method == "reward" else f"{method} reward model"
