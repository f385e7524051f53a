"""Inference for prompt-tuned and prefix-tuned models (peft prompt learning): virtual tokens as a fixed KV prefix.

A prompt-learning adapter cannot be merged into the weights: prompt tuning prepends learned input embeddings,
prefix tuning learned keys and values in every layer. Both come first in every sequence and, under causal
attention, nothing after them changes what they contribute, so both are the same thing at inference: a KV
cache of ``num_virtual_tokens`` positions computed once (prompt tuning: the base model run on the learned
embeddings; prefix tuning: the learned keys and values themselves) and put in front of every row.

``VirtualTokenModel`` wraps the base model with that prefix and takes the calls the project's decoding and
scoring make (``phases.inference.generation.decode_batch``, lm-eval's log-likelihoods through
``phases.evaluation.lm_eval_hf``, the guardrails' probabilities): the caller's attention mask and position ids
cover its own tokens only, and the logits are those of its own tokens, so code written for a plain model
works unchanged. Training set the text's positions after the virtual tokens (peft prepends them), and so does
this. peft's forward instead returns logits for the virtual positions too (prompt tuning), which
lm-eval would misalign.
"""

import torch


class VirtualTokenModel(torch.nn.Module):
    """A causal LM with a fixed prefix of virtual tokens (see the module docstring)."""

    def __init__(self, base_model, keys: list, values: list):
        super().__init__()
        self.base = base_model
        self.num_virtual_tokens = int(keys[0].shape[-2])
        for i, (k, v) in enumerate(zip(keys, values, strict=True)):
            self.register_buffer(f"prefix_key_{i}", k.detach().clone())
            self.register_buffer(f"prefix_value_{i}", v.detach().clone())
        self.num_layers = len(keys)

    @property
    def config(self):
        return self.base.config

    @property
    def generation_config(self):
        return self.base.generation_config

    @property
    def device(self):
        return self.base.device

    @property
    def dtype(self):
        return self.base.dtype

    def tie_weights(self):  # lm-eval calls it on the model it is given
        return None

    def generate(self, *args, **kwargs):
        raise TypeError(
            "a prompt-tuned or prefix-tuned model decodes with phases.inference.generation.decode_batch "
            "(decoder='pruned'), not transformers' generate"
        )

    def _prefilled(self, cache, batch: int):
        from transformers import DynamicCache

        cache = cache if cache is not None else DynamicCache(config=self.base.config)
        if cache.get_seq_length() == 0:
            for i in range(self.num_layers):
                k, v = getattr(self, f"prefix_key_{i}"), getattr(self, f"prefix_value_{i}")
                cache.update(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1), i)
        return cache

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=None, inputs_embeds=None, **kwargs):  # fmt: skip
        batch, length = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
        n = self.num_virtual_tokens
        cache = self._prefilled(past_key_values, batch)
        seen = cache.get_seq_length() - n  # the caller's own tokens already in the cache
        device = self.base.device
        if attention_mask is None:
            attention_mask = torch.ones(batch, seen + length, dtype=torch.long, device=device)
        if position_ids is None:
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -length:]
        prefix_mask = torch.ones(batch, n, dtype=attention_mask.dtype, device=attention_mask.device)
        return self.base(
            input_ids=input_ids,
            inputs_embeds=inputs_embeds,
            attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
            position_ids=position_ids + n,
            past_key_values=cache,
            use_cache=True if use_cache is None else use_cache,
            **kwargs,
        )


def from_peft(peft_model) -> VirtualTokenModel:
    """The VirtualTokenModel of a loaded peft prompt-learning model (prompt tuning or prefix tuning)."""
    from peft import PeftType

    config = peft_model.active_peft_config
    base = peft_model.get_base_model()
    with torch.no_grad():
        prompt = peft_model.get_prompt(batch_size=1)
        if config.peft_type == PeftType.PROMPT_TUNING:  # learned input embeddings: run them through once
            prompt = base(inputs_embeds=prompt.to(base.dtype), use_cache=True).past_key_values
        elif config.peft_type != PeftType.PREFIX_TUNING:
            raise ValueError(f"{config.peft_type} is not prompt tuning or prefix tuning")
        keys = [layer.keys for layer in prompt.layers]
        values = [layer.values for layer in prompt.layers]
    return VirtualTokenModel(base, keys, values)
