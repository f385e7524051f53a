"""phases.evaluation.hallucination: the hallucination index, perplexity and decode speed on the tiny model."""

import pytest

from finetune_assets.phases.evaluation import hallucination

GLOSSARY = [
    {
        "id": "g0",
        "term": "list",
        "definition": "A mutable sequence of items; append adds an item at the end.",
    },
    {
        "id": "g1",
        "term": "tuple",
        "definition": "An immutable sequence, often used to return several values.",
    },
    {
        "id": "g2",
        "term": "decorator",
        "definition": "A function that takes a function and returns a wrapper.",
    },
    {"id": "g3", "term": "module", "definition": "A file of Python code that the import statement loads."},
]


def test_hallucination_index_on_tiny_model(tiny_model_dir):
    from finetune_assets.phases.inference.generation import load_for_inference

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    result = hallucination.hallucination_index(
        model, tokenizer, GLOSSARY, max_new_tokens=6, batch_size=2, rouge_threshold=0.25
    )
    assert 0.0 <= result["index"] <= 1.0
    assert result["n_terms"] == len(GLOSSARY) == len(result["per_term"])
    assert [row["term"] for row in result["per_term"]] == [g["term"] for g in GLOSSARY]
    assert {"reference", "generated", "rouge_l", "similarity", "correct"} <= set(result["per_term"][0])
    assert result["generation"]["wall_s"] > 0


def test_hallucination_index_scripted_half_correct():
    seen = {}

    def fake_generate(conversations, max_new_tokens):
        seen.update(conversations=conversations, max_new_tokens=max_new_tokens)
        return [
            g["definition"] if i % 2 == 0 else "Bananas are yellow and grow in bunches."
            for i, g in enumerate(GLOSSARY)
        ]

    result = hallucination.hallucination_index(
        None, None, GLOSSARY, max_new_tokens=7, batch_size=3, rouge_threshold=0.25, generate_fn=fake_generate
    )
    assert result["index"] == 0.5
    assert [row["correct"] for row in result["per_term"]] == [True, False, True, False]
    assert seen["max_new_tokens"] == 7
    assert seen["conversations"][1] == [
        {
            "role": "user",
            "content": "In Python, what does the term 'tuple' mean? Answer in one or two sentences.",
        }
    ]


def test_hallucination_index_rejects_wrong_number_of_answers():
    with pytest.raises(RuntimeError):
        hallucination.hallucination_index(
            None, None, GLOSSARY, max_new_tokens=4, batch_size=2, rouge_threshold=0.25,
            generate_fn=lambda *a: ["only one"],
        )  # fmt: skip


def test_decode_speed_holds_end_of_turn_back_for_exactly_the_asked_tokens(tiny_model_dir):
    """Make the token the model would emit first its end-of-turn: a plain answer then stops at once, the
    fixed-length measurement still decodes every asked token."""
    from finetune_assets.phases.inference.generation import generate_chat, load_for_inference, render_chat

    model, tokenizer = load_for_inference(tiny_model_dir, device="cpu")
    conversations = hallucination.definition_conversations(GLOSSARY[:2])
    first = []
    for conv in conversations:
        ids = tokenizer(render_chat(tokenizer, conv, add_generation_prompt=True), return_tensors="pt")
        first.append(int(model(**ids).logits[0, -1].argmax()))
    model.generation_config.eos_token_id = first
    forwards = []  # one forward pass per decoded token: the prompt's (the first token), then one per token
    model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    assert generate_chat(model, tokenizer, conversations, 6, batch_size=1) == ["", ""]
    assert len(forwards) == 2  # stopped at the (new) end-of-turn token, right after each prompt
    forwards.clear()
    speed = hallucination.decode_speed(model, tokenizer, conversations, tokens=6, batch_size=1)
    assert len(forwards) == 2 * 6 and speed["generation/decode_tokens_per_s_fixed"] > 0
    assert hallucination.decode_speed(model, tokenizer, [], tokens=6, batch_size=1) == {}
