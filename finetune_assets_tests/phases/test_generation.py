"""generate_chat on the tiny random model: one answer per conversation, in order, independent of batching."""

import torch

from finetune_assets.phases.generation import generate_chat, load_for_inference, render_chat


def _conversations():
    questions = ["What is a list?", "Tell me about dictionaries and sets in Python, please.", "Hi", "lambda?"]
    return [[{"role": "user", "content": q}] for q in questions] + [
        [
            {"role": "system", "content": "You answer questions about Python."},
            {"role": "user", "content": "What does the with statement do?"},
        ]
    ]


def test_render_chat_adds_generation_prompt(tiny_model_dir):
    _, tokenizer = load_for_inference(tiny_model_dir)
    text = render_chat(tokenizer, [{"role": "user", "content": "hello"}], add_generation_prompt=True)
    assert text == "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.padding_side == "left" and tokenizer.pad_token is not None


def test_generate_chat_order_and_batching(tiny_model_dir):
    model, tokenizer = load_for_inference(tiny_model_dir)
    assert not model.training
    # A fresh random model with tied embeddings just repeats the last token ("\n", stripped to ""); larger
    # random layer weights make every prompt produce its own distinct babble, so a mix-up would show.
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "layers" in name and param.dim() == 2:
                param.normal_(std=0.5)
    convs = _conversations()
    batched = generate_chat(model, tokenizer, convs, max_new_tokens=8, batch_size=3)
    single = [generate_chat(model, tokenizer, [c], max_new_tokens=8, batch_size=1)[0] for c in convs]
    assert len(batched) == len(convs)
    assert all(isinstance(t, str) for t in batched)
    # the random model babbles, but deterministically: each answer belongs to its own prompt
    assert batched == single
    assert len(set(batched)) == len(convs) and all(batched)
    assert all("<|im_end|>" not in t and "<|pad|>" not in t for t in batched)
    assert generate_chat(model, tokenizer, [], max_new_tokens=4) == []
