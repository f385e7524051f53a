"""phases.training.examples: packed pretraining text and binary feedback as trl KTO examples."""

import json

from finetune_assets.phases.training.examples import pack_texts


def test_pack_texts_mixes_general_text(tiny_model_dir, tiny_corpus):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    general = ["zzzz " * 200] * 5
    blocks = pack_texts(tokenizer, tiny_corpus, general, 0.25, 32)
    assert blocks and all(len(b) == 32 for b in blocks)
    zz = set(tokenizer("zzzz zzzz", add_special_tokens=False)["input_ids"])
    share = sum(t in zz for b in blocks for t in b) / sum(len(b) for b in blocks)
    assert 0.1 < share < 0.4
    assert pack_texts(tokenizer, tiny_corpus, general, 0.0, 32) == pack_texts(
        tokenizer, tiny_corpus, [], 0.0, 32
    )


def test_binary_feedback_rows_become_trl_kto_examples(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template

    from finetune_assets.phases.data.feedback import load_feedback_file
    from finetune_assets.phases.training.examples import to_kto_example

    path = tmp_path / "feedback.jsonl"
    path.write_text(
        json.dumps({"prompt": "Is eval() safe?", "completion": "No.", "label": "thumbs_down"}) + "\n"
    )
    (row,) = load_feedback_file(path).binary
    example = to_kto_example(row)
    rendered = apply_chat_template(example, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert "Is eval() safe?" in rendered["prompt"] and rendered["completion"].startswith("No.")
    assert example["label"] is False
