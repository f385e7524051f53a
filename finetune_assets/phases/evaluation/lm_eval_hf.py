"""lm-eval's Hugging Face model with the project's decoder for generation tasks.

lm-eval's HFLM generates a batch with transformers' ``generate`` and stop-string criteria: every row keeps
decoding until the batch's last row has met a stop string. ``PrunedHFLM`` decodes the same greedy tokens
with phases.inference.generation.decode_batch, where a row that has met its stop string (or a stop token) leaves the
batch; lm-eval then cuts the text at the first stop string exactly as before. Log-likelihood tasks are
lm-eval's own. Sampled generation (do_sample / temperature > 0) is left to lm-eval's path.
"""

from lm_eval.models.huggingface import HFLM

from finetune_assets.phases.inference.generation import decode_batch, stop_token_ids


class PrunedHFLM(HFLM):
    """HFLM whose ``_model_generate`` is phases.inference.generation.decode_batch (greedy only; else HFLM's)."""

    def _model_generate(self, context, max_length: int, stop: list[str], **generation_kwargs):
        import torch

        mask = generation_kwargs.pop("attention_mask", None)
        sampled = generation_kwargs.get("do_sample") or (generation_kwargs.get("temperature") or 0) > 0
        if sampled or self.backend != "causal":
            return super()._model_generate(
                context, max_length, stop, attention_mask=mask, **generation_kwargs
            )
        if mask is None:
            mask = torch.ones_like(context)
        rows = [ids[m.bool()].tolist() for ids, m in zip(context, mask, strict=True)]
        new = decode_batch(
            self.model,
            rows,
            max_new_tokens=max(1, max_length - context.shape[1]),
            stop_ids=stop_token_ids(self.model, self.tokenizer),
            pad_id=self.tokenizer.pad_token_id,
            stop_when=stop_strings_met(self.tokenizer, stop),
        )
        width = max((len(r) for r in new), default=0)
        pad = self.tokenizer.pad_token_id
        tail = torch.tensor([r + [pad] * (width - len(r)) for r in new], dtype=context.dtype)
        return torch.cat([context, tail.to(context.device)], dim=1)  # lm-eval drops the context columns


def stop_strings_met(tokenizer, stops: list[str]):
    """stop_when for decode_batch: True once the decoded new tokens contain one of ``stops``. Only the last
    few tokens are decoded each step (a stop string of n characters lies within its last n + 2 tokens)."""
    stops = [s for s in stops if s]
    if not stops:
        return None
    window = max(len(s) for s in stops) + 2

    def met(new_ids: list[int]) -> bool:
        text = tokenizer.decode(new_ids[-window:], skip_special_tokens=False)
        return any(s in text for s in stops)

    return met
