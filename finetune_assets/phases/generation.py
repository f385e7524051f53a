"""Loading a model folder for inference and batched greedy chat generation.

``render_chat`` is the one place a conversation becomes text: training (trl applies the same tokenizer
template), evaluation and the runtime all go through the tokenizer's chat template, so they cannot drift
apart.
"""

from pathlib import Path

from finetune_assets.phases.hardware import Precision


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` ({role, content} dicts) with the tokenizer's chat template, as text."""
    if not tokenizer.chat_template:
        raise ValueError(
            "the tokenizer has no chat template: resolve the base model with "
            "phases.models.resolve_base_model, which installs the project's ChatML template"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def load_for_inference(
    model_dir: Path, adapter_dir: Path | None = None, device: str | None = None, precision: Precision = "auto"
):
    """(model, tokenizer) from an HF folder, optionally with a LoRA adapter merged in.

    Eval mode, on ``device`` (default: CPU, or CUDA when one is present), weights in bfloat16 where bf16 is
    native and ``precision`` is "auto" (phases.hardware; 3.7x the fp32 tokens/s of greedy decoding on the
    project's CPU), else float32. The adapter is merged in float32 before the cast. The tokenizer pads on the
    left (decoder-only batched generation) and always has a pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_assets.phases.hardware import inference_dtype

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device=device, dtype=inference_dtype(precision))
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _stop_token_ids(model, tokenizer) -> list[int]:
    ids = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and value not in ids:
            ids.append(value)
    return ids


def generate_chat(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int,
    batch_size: int = 8,
    *,
    temperature: float = 0.0,
    seed: int = 0,
    min_new_tokens: int | None = None,
) -> list[str]:
    """Answers to ``conversations`` (each a list of messages ending before the assistant's turn): greedy,
    or sampled (top-p 0.95, seeded) when ``temperature`` > 0 — on-policy rejected answers want samples.

    Prompts are sorted by length so a batch holds similar lengths (less padding), generated with left padding,
    and returned in input order: only the new text, special tokens stripped. Prompts longer than the model's
    context keep their last tokens. ``min_new_tokens`` holds end-of-turn back until that many tokens were
    generated (min = max gives every answer exactly that length: fixed-length speed measurements).
    """
    import torch

    if not conversations:
        return []
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
    max_prompt = max(1, max_positions - max_new_tokens)
    prompts = [
        tokenizer(render_chat(tokenizer, conv, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for conv in conversations
    ]
    prompts = [ids[-max_prompt:] for ids in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    stop_ids = _stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    outputs: list[str | None] = [None] * len(prompts)
    if temperature > 0:
        torch.manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer.pad({"input_ids": [prompts[i] for i in idx]}, return_tensors="pt").to(device)
            generated = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=0.95 if temperature > 0 else None,
                top_k=None,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            for i, text in zip(
                idx, tokenizer.batch_decode(new_tokens, skip_special_tokens=True), strict=True
            ):
                outputs[i] = text.strip()
    return outputs
