"""Loading from local dirs and the hub, pad-token repair, LoRA wrapping and merged saving."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx2
import pytest
import torch
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from transformers.activations import GELUTanh, NewGELUActivation

from rlhf_exp.config.schema import LoraSpec, ModelSpec
from rlhf_exp.errors import UserError
from rlhf_exp.models.loading import (
    apply_lora,
    count_parameters,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    lora_config,
)
from rlhf_exp.models.saving import save_merged

SPEC = ModelSpec()
LORA = LoraSpec(enabled=True, r=4, alpha=8.0)


# ------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("path", ["/nonexistent/model", "./no/such/dir", "~/no-such-model-dir"])
def test_missing_local_path_is_a_one_line_user_error(path: str) -> None:
    with pytest.raises(UserError) as err:
        load_causal_lm(path, SPEC)
    assert str(err.value) == (
        f"model.name_or_path={path!r} does not exist (a local model dir or a hub id like 'gpt2')"
    )


def test_local_dir_without_a_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"could not load model.name_or_path='.*': ") as err:
        load_causal_lm(str(tmp_path), SPEC)
    assert "\n" not in str(err.value)


@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("load", [load_tokenizer, load_causal_lm, load_reward_model])
def test_offline_hub_id_is_a_one_line_user_error(load, monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError(f"test: no network {args}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # a host name is looked up first
    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(UserError) as err:
        load("gpt2", SPEC)
    message = str(err.value)
    assert message.startswith(
        "could not load model 'gpt2' from the hub: no network access or not cached "
        "(HF_HUB_OFFLINE is set)"
    )
    assert message.endswith("use a local dir via model.name_or_path=PATH") and "\n" not in message
    assert attempts == []  # offline means no connection attempted, so no retries to wait out


def test_unknown_hub_repository_is_reported_as_not_found(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://huggingface.co/someone/no-such-model/resolve/main/config.json"

    def not_found(*args, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request("HEAD", url))
        raise RepositoryNotFoundError("404 Client Error. Repository Not Found", response=response)

    # The lowest layer transformers calls; it wraps the error in a plain OSError on the way up.
    monkeypatch.setattr("transformers.utils.hub.hf_hub_download", not_found)
    with pytest.raises(UserError) as err:
        load_causal_lm("someone/no-such-model", SPEC)
    assert str(err.value).startswith("model 'someone/no-such-model' was not found on the hub")
    assert "no network" not in str(err.value)


# ------------------------------------------------------------------------------ loading, pad
def test_dtype_comes_from_the_spec(tiny_dir: Path) -> None:
    model = load_causal_lm(str(tiny_dir), ModelSpec(dtype="bfloat16"))
    assert model.dtype == torch.bfloat16


def _saved_for_backward_bytes(model: torch.nn.Module, ids: torch.Tensor) -> int:
    saved: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.sum().backward()
    return sum(saved)


@pytest.mark.parametrize(
    ("load", "plain_load"),
    [
        (load_causal_lm, AutoModelForCausalLM),
        (load_reward_model, AutoModelForSequenceClassification),
    ],
    ids=["causal-lm", "reward-model"],
)
def test_gpt2s_composed_gelu_runs_as_the_fused_kernel_computing_the_same_function(
    tiny_dir: Path, load, plain_load
) -> None:
    kwargs = {"num_labels": 1} if plain_load is AutoModelForSequenceClassification else {}
    plain = plain_load.from_pretrained(tiny_dir, **kwargs)
    tokenizer = load_tokenizer(str(tiny_dir), SPEC)
    plain.config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(0)
    loaded = load(str(tiny_dir), SPEC, tokenizer)
    if kwargs:  # the fresh score head is drawn at random: give both the same one
        loaded.score.load_state_dict(plain.score.state_dict())
    ids = torch.randint(0, plain.config.vocab_size, (2, 12))
    layers = plain.config.n_layer

    def kinds(model: torch.nn.Module) -> list[type]:
        return [type(m) for m in model.modules() if isinstance(m, NewGELUActivation | GELUTanh)]

    assert kinds(plain) == [NewGELUActivation] * layers
    assert kinds(loaded) == [GELUTanh] * layers
    assert loaded.config.activation_function == "gelu_new"  # a saved model is the one loaded
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, plain(input_ids=ids).logits)
    # the fused kernel keeps its input for backward; the composed one five tensors of that size
    assert _saved_for_backward_bytes(loaded, ids) < 0.8 * _saved_for_backward_bytes(plain, ids)


@pytest.mark.parametrize("pad_as_eos", [False, True], ids=["no-pad", "pad-is-eos"])
def test_tokenizer_without_distinct_pad_gets_one_and_models_grow(
    tmp_path: Path, corpus: list[str], pad_as_eos: bool, save_gpt2_like
) -> None:
    path = str(save_gpt2_like(tmp_path, corpus, pad_as_eos=pad_as_eos))
    n_vocab = AutoModelForCausalLM.from_pretrained(path).config.vocab_size
    tok = load_tokenizer(path, SPEC, padding_side="left")
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id == n_vocab != tok.eos_token_id
    assert tok.padding_side == "left" and len(tok) == n_vocab + 1

    lm = load_causal_lm(path, SPEC, tokenizer=tok)
    assert lm.get_input_embeddings().weight.shape[0] == len(tok)
    assert lm.get_output_embeddings().weight.shape[0] == len(tok)
    assert lm.config.pad_token_id == lm.generation_config.pad_token_id == tok.pad_token_id

    rm = load_reward_model(path, SPEC, tokenizer=tok)
    assert rm.get_input_embeddings().weight.shape[0] == len(tok)
    assert rm.config.pad_token_id == tok.pad_token_id and rm.config.num_labels == 1
    batch = tok(["The film was great.", "Dull."], return_tensors="pt", padding=True)
    assert (batch["input_ids"] == tok.pad_token_id).any()
    assert rm(**batch).logits.shape == (2, 1)


def test_tokenizer_with_a_distinct_pad_is_left_alone(tiny_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_dir), SPEC)
    model = load_causal_lm(str(tiny_dir), SPEC, tokenizer=tok)
    assert tok.pad_token_id == 1 and model.config.vocab_size == len(tok)


def test_reward_model_without_any_pad_id_fails(
    tmp_path: Path, corpus: list[str], save_gpt2_like
) -> None:
    path = str(save_gpt2_like(tmp_path, corpus, pad_as_eos=False))
    with pytest.raises(ValueError, match="pass the tokenizer"):
        load_reward_model(path, SPEC)


# --------------------------------------------------------------------------------------- LoRA
def test_lora_disabled_returns_the_model_unchanged(tiny_dir: Path) -> None:
    model = load_causal_lm(str(tiny_dir), SPEC)
    assert lora_config(SPEC, LoraSpec(enabled=False), "CAUSAL_LM") is None
    assert apply_lora(model, SPEC, LoraSpec(enabled=False), "CAUSAL_LM") is model
    trainable, total = count_parameters(model)
    assert trainable == total > 0


def test_lora_causal_lm_trains_only_adapters(tiny_dir: Path) -> None:
    base = load_causal_lm(str(tiny_dir), SPEC)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(ids).logits
    model = apply_lora(base, SPEC, LORA, "CAUSAL_LM")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    # every targeted layer got an adapter: 2 layers x (c_attn, attn c_proj, c_fc, mlp c_proj)
    assert len(trainable) == 2 * 4 * 2
    n_trainable, total = count_parameters(model)
    assert n_trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert n_trainable < total
    with torch.no_grad():  # B starts at zero, so wrapping must not change the function
        torch.testing.assert_close(model(ids).logits, before)


def test_lora_seq_cls_keeps_the_score_head_trainable(tiny_dir: Path) -> None:
    tok = load_tokenizer(str(tiny_dir), SPEC)
    model = apply_lora(load_reward_model(str(tiny_dir), SPEC, tok), SPEC, LORA, "SEQ_CLS")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    head = [n for n in trainable if "score" in n]
    assert head and all("lora_" in n or "score" in n for n in trainable)
    assert len(trainable) == len(head) + 2 * 4 * 2


def test_unknown_lora_targets_list_the_valid_layer_names(tiny_dir: Path) -> None:
    model = load_causal_lm(str(tiny_dir), SPEC)
    spec = ModelSpec(lora_target_modules=["c_attn", "q_proj", "v_proj"])
    with pytest.raises(UserError) as err:
        apply_lora(model, spec, LORA, "CAUSAL_LM")
    message = str(err.value)
    assert message.startswith("model.lora_target_modules=['c_attn', 'q_proj', 'v_proj']")
    assert "['q_proj', 'v_proj'] not found" in message
    assert message.endswith("linear layers in the model: c_attn, c_fc, c_proj, lm_head")


def test_bad_task_type_is_rejected() -> None:
    with pytest.raises(ValueError, match="CAUSAL_LM, SEQ_CLS"):
        lora_config(SPEC, LORA, "TOKEN_CLS")


# ------------------------------------------------------------------------------------- saving
@pytest.mark.parametrize("task_type", ["CAUSAL_LM", "SEQ_CLS"])
def test_save_merged_round_trips(tiny_dir: Path, tmp_path: Path, task_type: str) -> None:
    tok = load_tokenizer(str(tiny_dir), SPEC)
    load = load_causal_lm if task_type == "CAUSAL_LM" else load_reward_model
    torch.manual_seed(0)
    model = apply_lora(load(str(tiny_dir), SPEC, tokenizer=tok), SPEC, LORA, task_type).eval()
    with torch.no_grad():  # stand-in for training: make adapters and head non-trivial
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    batch = tok(["The ending was moving.", "Slow."], return_tensors="pt", padding=True)
    with torch.no_grad():
        wrapped = model(**batch).logits
        plain = load(str(tiny_dir), SPEC, tokenizer=tok).eval()(**batch).logits
    assert not torch.allclose(wrapped, plain, atol=1e-3)  # the adapters do change the output

    save_merged(model, tok, tmp_path / "merged")
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    reloaded = load(
        str(tmp_path / "merged"), SPEC, tokenizer=load_tokenizer(str(tmp_path / "merged"), SPEC)
    )
    assert not any("lora_" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(**batch).logits, wrapped, atol=1e-5, rtol=0)
