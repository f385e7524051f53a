"""generate_chat on the tiny random model: one answer per conversation, in order, independent of batching."""

import torch

from finetune_assets.phases.inference.generation import generate_chat, load_for_inference, render_chat


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
    # fp32: batched == one-at-a-time exactly is an fp32 property (bf16 rounding varies with padding)
    model, tokenizer = load_for_inference(tiny_model_dir, precision="fp32")
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


def test_decode_batch_equals_generate_while_stopped_rows_leave_the_batch(babbling_tiny_model):
    from finetune_assets.phases.inference.generation import decode_batch

    model, tokenizer = babbling_tiny_model
    rows = [
        tokenizer(render_chat(tokenizer, c, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for c in _conversations()
    ]
    pad = tokenizer.pad_token_id
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    free = model.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=[], pad_token_id=pad)
    free = free[:, batch["input_ids"].shape[1] :].tolist()

    # a stop token the babble reaches at different steps in different rows, so rows leave the batch one by one
    def first_steps(token):
        return {r.index(token) if token in r else None for r in free}

    stop = max({t for r in free for t in r}, key=lambda t: len(first_steps(t)))
    assert len(first_steps(stop)) > 2, free
    want = model.generate(**batch, max_new_tokens=10, do_sample=False, eos_token_id=[stop], pad_token_id=pad)
    want = [r[: r.index(stop)] if stop in r else r for r in want[:, batch["input_ids"].shape[1] :].tolist()]
    got = decode_batch(model, rows, max_new_tokens=10, stop_ids=[stop], pad_id=pad)
    assert got == want
    assert len({len(r) for r in got}) > 1  # the rows did stop at different steps
    # min_new_tokens holds the stop back: every row runs its full length
    held = decode_batch(model, rows, max_new_tokens=6, stop_ids=[stop], pad_id=pad, min_new_tokens=6)
    assert [len(r) for r in held] == [6] * len(rows)
    # sampled: seeded runs repeat, another seed differs
    torch.manual_seed(1)
    a = decode_batch(model, rows, max_new_tokens=8, stop_ids=[], pad_id=pad, temperature=1.0)
    torch.manual_seed(1)
    b = decode_batch(model, rows, max_new_tokens=8, stop_ids=[], pad_id=pad, temperature=1.0)
    torch.manual_seed(2)
    c = decode_batch(model, rows, max_new_tokens=8, stop_ids=[], pad_id=pad, temperature=1.0)
    assert a == b != c and all(len(r) == 8 for r in a)


def test_a_shared_system_turn_is_computed_once_with_the_same_tokens(babbling_tiny_model):
    from finetune_assets.phases.inference.generation import MIN_SHARED_PREFIX, decode_batch, shared_prefix

    model, tokenizer = babbling_tiny_model
    system = {"role": "system", "content": "You answer questions about Python, briefly and exactly."}
    rows = [
        tokenizer(
            render_chat(tokenizer, [system, *c[-1:]], add_generation_prompt=True), add_special_tokens=False
        )["input_ids"]
        for c in _conversations()
    ]
    assert shared_prefix(rows) >= MIN_SHARED_PREFIX
    pad = tokenizer.pad_token_id
    batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt")
    want = model.generate(**batch, max_new_tokens=8, do_sample=False, eos_token_id=[], pad_token_id=pad)
    shared = decode_batch(model, rows, max_new_tokens=8, stop_ids=[], pad_id=pad)
    alone = decode_batch(model, rows, max_new_tokens=8, stop_ids=[], pad_id=pad, share_prefix=False)
    assert shared == alone == want[:, batch["input_ids"].shape[1] :].tolist()


def test_shared_prefix_leaves_every_row_a_token_of_its_own():
    from finetune_assets.phases.inference.generation import shared_prefix

    common = list(range(10))
    assert shared_prefix([common + [1, 2], common + [3]]) == 10
    assert shared_prefix([common, common]) == 9  # identical rows: the last token stays each row's own
    assert shared_prefix([common + [1], [0, 1, 2] + [7] * 9]) == 0  # 3 common tokens: not worth it
    assert shared_prefix([common + [1]]) == 0


def test_generate_chat_decoders_agree(babbling_tiny_model):
    model, tokenizer = babbling_tiny_model
    convs = _conversations()
    pruned = generate_chat(model, tokenizer, convs, max_new_tokens=8, batch_size=3)
    assert pruned == generate_chat(model, tokenizer, convs, max_new_tokens=8, batch_size=3, decoder="hf")


def test_one_conversation_is_the_same_tokens_in_training_evaluation_and_serving(tmp_path, tiny_model_dir):
    """The chat template is applied identically by SFT (trl), DPO (trl), evaluation/T&R (generate_chat) and
    the served endpoint: the model sees the same prompt tokens everywhere, and SFT trains on exactly the
    rendered conversation with the loss on the answer only."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer

    from finetune_assets.phases.inference.generation import generate_chat, load_for_inference, render_chat
    from finetune_assets.phases.serving import serve

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    conv = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is a tuple?"},
        {"role": "assistant", "content": "An immutable sequence."},
    ]
    prompt_ids = tokenizer(
        render_chat(tokenizer, conv[:-1], add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    full_ids = tokenizer(render_chat(tokenizer, conv), add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids

    common = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none", "max_length": 256}
    sft = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=SFTConfig(**common, assistant_only_loss=True),
        train_dataset=Dataset.from_list([{"messages": conv}]),
        processing_class=tokenizer,
    )
    row = sft.train_dataset[0]
    assert row["input_ids"] == full_ids
    labels = sft.data_collator([row])["labels"][0].tolist()  # -100: no loss on that token
    trained = [t for t, label in zip(full_ids, labels, strict=True) if label != -100]
    assert tokenizer.decode(trained).startswith("An immutable sequence.")
    assert all(label == -100 for label in labels[: len(prompt_ids)])

    dpo = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        args=DPOConfig(**common),
        train_dataset=Dataset.from_list(
            [
                {
                    "prompt": conv[:-1],
                    "chosen": conv[-1:],
                    "rejected": [{"role": "assistant", "content": "No."}],
                }
            ]
        ),
        processing_class=tokenizer,
    )
    assert list(dpo.train_dataset[0]["prompt_ids"]) == prompt_ids

    seen = []

    def spy(model):  # the tokens of every forward pass: with one new token, the prompt's prefill only
        def record(module, args, kwargs):
            seen.append(kwargs["input_ids"][0].tolist())

        model.register_forward_pre_hook(record, with_kwargs=True)

    model, _ = load_for_inference(tiny_model_dir)
    spy(model)
    generate_chat(model, tokenizer, [conv[:-1]], max_new_tokens=1)
    served = serve.ChatModel(tiny_model_dir)
    spy(served.model)
    served.complete({"messages": conv[:-1], "max_tokens": 1})
    assert seen == [prompt_ids, prompt_ids]
