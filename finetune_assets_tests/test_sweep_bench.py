"""bench/sweep_bench.py: the per-row validation loss it compares best and default on is the SFT loss of each
row (assistant tokens only), as the model's own loss with the other tokens' labels masked gives it."""

import torch

from finetune_assets.phases.inference.generation import load_for_inference
from finetune_assets_tests.test_bench import _load


def test_row_losses_are_the_assistant_token_loss(tiny_model_dir, tiny_chat_rows):
    bench = _load("sweep_bench")
    rows = tiny_chat_rows[:3]
    losses = bench.row_losses(tiny_model_dir, rows, max_length=128)
    model, tokenizer = load_for_inference(tiny_model_dir, precision="fp32")
    for row, loss in zip(rows, losses, strict=True):
        encoded = tokenizer.apply_chat_template(
            row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids = torch.tensor([encoded["input_ids"]])
        labels = ids.masked_fill(torch.tensor([encoded["assistant_masks"]]) == 0, -100)
        assert 0 < labels.ne(-100).sum() < ids.numel()  # some tokens scored, the prompt not
        with torch.no_grad():
            expected = model(input_ids=ids, labels=labels).loss.item()
        assert abs(loss - expected) < 1e-4
