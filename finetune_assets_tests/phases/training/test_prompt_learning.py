"""Prompt tuning and prefix tuning (TrainConfig.adapter prompt / prefix) on the tiny model: only the virtual
tokens train, the stage writes the adapter alone (nothing to merge), and evaluation loads it with its base."""

import json

import pytest
from safetensors.torch import load_file

from finetune_assets.config import EvalConfig, TrainConfig
from finetune_assets.phases.evaluation import variant
from finetune_assets.phases.inference.generation import generate_chat, load_for_inference
from finetune_assets.phases.inference.virtual_tokens import VirtualTokenModel
from finetune_assets.phases.serving.chat import ChatModel
from finetune_assets.phases.training.artifacts import loadable_dir, read_summary
from finetune_assets.phases.training.train import sft
from finetune_assets.recipe import Profile
from finetune_assets_tests.phases.evaluation.test_lm_eval_tasks import write_eval_sets

BASE = {"max_steps": 4, "learning_rate": 3e-2, "per_device_batch_size": 4, "max_length": 128,
        "checkpoint_steps": 0, "precision": "fp32", "num_virtual_tokens": 4}  # fmt: skip


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_only_virtual_tokens_train(tmp_path, tiny_model_dir, tiny_chat_rows, tiny_corpus, kind):
    import torch
    from transformers import AutoConfig

    out = tmp_path / "out"
    summary = sft(tiny_model_dir, tiny_chat_rows, tiny_chat_rows[:2], TrainConfig(**BASE, adapter=kind), out)
    hidden = AutoConfig.from_pretrained(tiny_model_dir)
    per_token = hidden.hidden_size * (1 if kind == "prompt" else 2 * hidden.num_hidden_layers)  # keys+values
    assert summary["trainable_params"] == 4 * per_token, "nothing but the virtual tokens is trainable"
    assert summary["changed_params"] >= 1 and summary["param_delta_l2"] > 0 and summary["packing"] is False
    saved = load_file(out / "adapter" / "adapter_model.safetensors")
    assert sum(t.numel() for t in saved.values()) == 4 * per_token
    assert not (out / "merged").exists(), "virtual tokens cannot be merged into the weights"
    assert loadable_dir(out) == out / "adapter" and read_summary(out)["method"] == "sft"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == ("PROMPT_TUNING" if kind == "prompt" else "PREFIX_TUNING")

    model, tokenizer = load_for_inference(loadable_dir(out), precision="fp32")
    assert isinstance(model, VirtualTokenModel) and model.num_virtual_tokens == 4
    base, _ = load_for_inference(tiny_model_dir, precision="fp32")
    ids = torch.tensor([tokenizer("a list is")["input_ids"]])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, base(input_ids=ids).logits, atol=1e-4)
    conversation = [[{"role": "user", "content": "What is a list?"}]]
    assert len(generate_chat(model, tokenizer, conversation, max_new_tokens=4)) == 1
    served = ChatModel(loadable_dir(out))  # the OpenAI-compatible server's model, from the same folder
    reply = served.complete({"messages": conversation[0], "max_tokens": 3})
    assert reply["choices"][0]["message"]["role"] == "assistant"
    assert served.context == hidden.max_position_embeddings - 4  # the virtual tokens take 4 positions

    # the whole evaluation of a variant runs on it: lm-eval's log-likelihoods and generation, our decoder
    cfg = EvalConfig(max_new_tokens=4, batch_size=4, max_glossary_terms=2, max_qa=2, max_perplexity_docs=2,
                     decode_speed_prompts=2, decode_speed_tokens=3, bootstrap_resamples=200)  # fmt: skip
    result = variant.evaluate_variant(
        kind, loadable_dir(out), write_eval_sets(tmp_path / "eval", tiny_corpus), cfg, tmp_path / "work",
        embedder=None,
    )  # fmt: skip
    metrics = result["metrics"]
    assert metrics["fa_domain_mc/sample_len"] == 2 and metrics["hallucination/n_terms"] == 2
    assert metrics["fa_heldout_ppl/word_perplexity"] > 1


def test_virtual_tokens_are_refused_where_a_later_stage_needs_weights():
    with pytest.raises(ValueError, match="dpo stage continues"):
        Profile(name="x", sft=TrainConfig(adapter="prompt"))
    Profile(name="x", tr=TrainConfig(adapter="prefix"))  # the last stage may
    with pytest.raises(ValueError, match="packing"):
        TrainConfig(adapter="prompt", packing=True)
    with pytest.raises(ValueError, match="method grpo"):
        TrainConfig(adapter="prefix", method="grpo")
    with pytest.raises(ValueError, match="adapter: prompt"):
        TrainConfig(adapter="prefix", prompt_init_text="Answer about Python.")
