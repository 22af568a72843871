"""The model card of a saved model dir, built from a config and metrics alone (no training),
and the `hub.push` opt-in that uploads it: off by default, refused without a repo id."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf_exp.config.schema import validate
from rlhf_exp.errors import ConfigError
from rlhf_exp.model_card import model_card, write_model_card

METRICS = {
    "method": "dpo",
    "train/loss": 0.512345678,
    "train/global_step": 40,
    "eval/gold_reward": 0.75,
    "eval/kl": 3.25,
    "data/pref_train/rows": 2850,  # about the run's data, not the model: not on the card
    "time/wall_s": 12.0,
    "objective": 0.5,
}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_policy_card_names_base_data_method_config_metrics_and_loading(compose_cfg):
    run = validate(compose_cfg("method=dpo", "lora=default", "seed=3"))
    card = model_card(run, METRICS, "GPT2LMHeadModel", upstream=("sft", "reward"))

    meta = _front_matter(card)
    assert meta["pipeline_tag"] == "text-generation" and "dpo" in meta["tags"]
    assert "base_model" not in meta  # the tiny model is built here, not a hub repo
    assert "tiny GPT-2 built from scratch" in card and "`sentiment`" in card
    assert f"(beta={run.method.beta})" in card  # the method's KL knob
    assert "r=16, alpha=32.0, dropout=0.0 on c_attn, c_proj, c_fc; merged" in card
    assert "| seed | 3 (upstream stages: 0) |" in card
    assert "| precision | fp32 compute, float32 weights |" in card
    assert "loss_type:" in card  # every key of the method, as YAML
    assert "Upstream stage `sft`:** the artifact cache" in card
    assert "| `train/loss` | 0.5123 |" in card and "| `eval/gold_reward` | 0.75 |" in card
    assert "| `objective` | 0.5 |" in card
    assert "data/pref_train/rows" not in card and "time/wall_s" not in card
    assert 'AutoModelForCausalLM.from_pretrained("PATH_OR_REPO")' in card
    assert "SequenceClassification" not in card


def test_reward_model_card_of_a_hub_base_says_how_to_score(compose_cfg):
    run = validate(compose_cfg("method=reward", "model=gpt2"))
    card = model_card(run, {"eval/accuracy": 0.91}, "GPT2ForSequenceClassification", ("sft",))

    meta = _front_matter(card)
    assert meta["base_model"] == "gpt2" and meta["pipeline_tag"] == "text-classification"
    assert "[gpt2](https://huggingface.co/gpt2)" in card
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert ".logits[0, 0]" in card and "LoRA | off" in card
    assert "\n# reward model (rlhf-exp)\n" in card  # not "reward reward model"


def test_card_of_local_files_names_files_not_paths(compose_cfg):
    # validate() does not open them (check_paths does); the card only names them
    files = ["+dataset.data_files.sft=/private/data/demos.jsonl"]
    run = validate(compose_cfg("dataset=files", "method=sft", *files))
    card = model_card(run, {}, "GPT2LMHeadModel")
    assert "sft: `demos.jsonl`" in card and "/private/data" not in card
    assert "No train/ or eval/ metrics were recorded." in card


def test_write_model_card_reads_the_architecture_from_the_dir(compose_cfg, tmp_path: Path):
    run = validate(compose_cfg("method=reward"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(
        json.dumps({"architectures": ["GPT2ForSequenceClassification"]})
    )
    path = write_model_card(model_dir, run, {"eval/accuracy": 0.9})
    assert path == model_dir / "README.md"
    assert "AutoModelForSequenceClassification" in path.read_text()


def test_hub_push_is_off_by_default(compose_cfg):
    hub = validate(compose_cfg()).hub
    assert (hub.push, hub.repo_id, hub.private) == (False, None, True)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["hub.push=true"],
            "hub.repo_id=None is invalid: hub.push=true needs a repo id like 'user/name'",
        ),
        (
            ["hub.push=true", "hub.repo_id=no-owner"],
            "hub.repo_id='no-owner' is invalid: expected 'user/name' or 'org/name'",
        ),
    ],
)
def test_hub_push_needs_a_namespaced_repo_id(compose_cfg, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert str(err.value).startswith(message)
