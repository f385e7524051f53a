"""phases.inference.virtual_tokens: a prompt- or prefix-tuned model served as a fixed KV prefix gives the same
logits as peft's own forward, and decodes the same greedy tokens, batched and left-padded."""

import pytest
import torch

from finetune_assets.phases.inference.generation import decode_batch
from finetune_assets.phases.inference.virtual_tokens import from_peft


def _peft_model(model_dir, kind: str):
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = (PromptTuningConfig if kind == "prompt" else PrefixTuningConfig)(
        task_type="CAUSAL_LM", num_virtual_tokens=5
    )
    model = get_peft_model(base, config)
    torch.manual_seed(0)
    with torch.no_grad():  # learned-looking virtual tokens: far from the init, so a wrong prefix shows
        for param in model.prompt_encoder.parameters():
            param.normal_()
    return model.eval()


@pytest.mark.parametrize("kind", ["prompt", "prefix"])
def test_same_logits_and_tokens_as_peft(tiny_model_dir, kind):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    peft_model = _peft_model(tiny_model_dir, kind)
    wrapped = from_peft(peft_model)
    assert wrapped.num_virtual_tokens == 5
    ids = torch.tensor([tokenizer("a list is a mutable sequence")["input_ids"]])
    with torch.no_grad():
        reference = peft_model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = wrapped(input_ids=ids).logits
    # peft's prompt tuning also returns the virtual positions' logits; the wrapper only the text's
    assert reference.shape[1] == ids.shape[1] + (5 if kind == "prompt" else 0)
    torch.testing.assert_close(got, reference[:, -ids.shape[1] :], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        base_logits = peft_model.get_base_model()(input_ids=ids).logits
    assert not torch.allclose(got, base_logits, atol=1e-3), "the virtual tokens change the output"

    rows = [
        tokenizer("a tuple")["input_ids"],
        tokenizer("what does a decorator do with a function")["input_ids"],
    ]
    batched = decode_batch(wrapped, rows, max_new_tokens=6, stop_ids=[], pad_id=tokenizer.pad_token_id or 0)
    for row, new in zip(rows, batched, strict=True):
        one = torch.tensor([row])
        out = peft_model.generate(input_ids=one, attention_mask=torch.ones_like(one), max_new_tokens=6,
                                  do_sample=False, eos_token_id=None)  # fmt: skip
        assert new == out[0, -6:].tolist()
