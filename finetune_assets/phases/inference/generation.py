"""Loading a model folder for inference and batched greedy chat generation.

``render_chat`` is the one place a conversation becomes text: training (trl applies the same tokenizer
template), evaluation and the runtime all go through the tokenizer's chat template, so they cannot drift
apart.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from finetune_assets.phases.inference.hardware import Precision, inference_dtype

Decoder = Literal["pruned", "hf"]

TOP_P = 0.95  # nucleus of sampled generation


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """Render ``messages`` ({role, content} dicts) with the tokenizer's chat template, as text."""
    if not tokenizer.chat_template:
        raise ValueError(
            "the tokenizer has no chat template: resolve the base model with "
            "phases.training.models.resolve_base_model, which installs the project's ChatML template"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def load_for_inference(
    model_dir: Path, adapter_dir: Path | None = None, device: str | None = None, precision: Precision = "auto"
):
    """(model, tokenizer) from an HF folder, optionally with a LoRA adapter merged in.

    ``model_dir`` may also be an adapter folder itself (a trained stage's ``adapter/``): its base is loaded from
    the folder the adapter records. A prompt-learning adapter (prompt or prefix tuning) cannot be merged and
    comes back as a phases.inference.virtual_tokens.VirtualTokenModel, which takes the same calls.

    Eval mode, on ``device`` (default: CPU, or CUDA when one is present), weights in bfloat16 where bf16 is
    native and ``precision`` is "auto" (phases.inference.hardware; 3.7x the fp32 tokens/s of greedy decoding on the
    project's CPU), else float32. The adapter is merged in float32 before the cast. The tokenizer pads on the
    left (decoder-only batched generation) and always has a pad token.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapter_dir is None and (model_dir / ADAPTER_CONFIG).is_file():
        model_dir, adapter_dir = adapter_base(model_dir), model_dir
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        from finetune_assets.phases.inference import virtual_tokens

        model = PeftModel.from_pretrained(model, str(adapter_dir))
        learned = model.active_peft_config.is_prompt_learning
        model = virtual_tokens.from_peft(model) if learned else model.merge_and_unload()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device=device, dtype=inference_dtype(precision))
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


ADAPTER_CONFIG = "adapter_config.json"


def is_model_folder(path: Path) -> bool:
    """Whether load_for_inference can load ``path``: a Hugging Face model folder, or a trained stage's
    adapter folder (prompt or prefix tuning leaves no merged weights)."""
    return (Path(path) / "config.json").is_file() or (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(adapter_dir: Path) -> Path:
    """The base model folder a peft adapter folder was trained on (its recorded base_model_name_or_path)."""
    import json

    base = json.loads((Path(adapter_dir) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base or not Path(base).is_dir():
        raise FileNotFoundError(
            f"{adapter_dir}: the adapter's base model {base!r} is not a folder here; load the adapter with "
            "its base folder (load_for_inference(base, adapter_dir))"
        )
    return Path(base)


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer: the generation config's end-of-turn id(s) and the tokenizer's eos."""
    ids = []
    configured = getattr(model.generation_config, "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if value is not None and value not in ids:
            ids.append(value)
    return ids


GenerateFn = Callable[[list[list[dict]], int], list[str]]  # (conversations, max_new_tokens) -> answers


def chat_generator(
    model, tokenizer, batch_size: int = 8, *, temperature: float = 0.0, seed: int = 0
) -> GenerateFn:
    """The GenerateFn of a loaded model: ``generate_chat`` in batches of ``batch_size``, greedy or sampled
    (``temperature`` > 0, seeded). Phases that generate take a GenerateFn, so that tests can script the
    answers without a model."""

    def generate(conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
        return generate_chat(
            model, tokenizer, conversations, max_new_tokens, batch_size, temperature=temperature, seed=seed
        )

    return generate


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
    decoder: Decoder = "pruned",
    share_prefix: bool = True,
) -> list[str]:
    """Answers to ``conversations`` (each a list of messages ending before the assistant's turn): greedy,
    or sampled (top-p 0.95, seeded) when ``temperature`` > 0 — on-policy rejected answers want samples.

    Prompts are sorted by length so a batch holds similar lengths (less padding), generated with left padding,
    and returned in input order: only the new text, special tokens stripped. Prompts longer than the model's
    context keep their last tokens. ``min_new_tokens`` holds end-of-turn back until that many tokens were
    generated (min = max gives every answer exactly that length: fixed-length speed measurements).
    ``decoder``: "pruned" (``decode_batch``: a row leaves the batch when it stops) or "hf" (transformers'
    ``generate``, whose rows keep decoding until the batch's longest answer stops). ``share_prefix``: see
    decode_batch (pruned only).
    """
    import torch

    if not conversations:
        return []
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
    max_prompt = max(1, max_positions - max_new_tokens - getattr(model, "num_virtual_tokens", 0))
    prompts = [
        tokenizer(render_chat(tokenizer, conv, add_generation_prompt=True), add_special_tokens=False)[
            "input_ids"
        ]
        for conv in conversations
    ]
    prompts = [ids[-max_prompt:] for ids in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    stop_ids = stop_token_ids(model, tokenizer)
    device = next(model.parameters()).device
    outputs: list[str | None] = [None] * len(prompts)
    if temperature > 0:
        torch.manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = [prompts[i] for i in idx]
            if decoder == "pruned":
                new_tokens = decode_batch(
                    model, rows, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                    pad_id=tokenizer.pad_token_id, min_new_tokens=min_new_tokens, temperature=temperature,
                    share_prefix=share_prefix,
                )  # fmt: skip
            else:
                batch = tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(device)
                generated = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=TOP_P if temperature > 0 else None,
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


def decode_batch(
    model,
    rows: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    pad_id: int,
    min_new_tokens: int | None = None,
    temperature: float = 0.0,
    stop_when: Callable[[list[int]], bool] | None = None,
    share_prefix: bool = True,
) -> list[list[int]]:
    """New token ids for each prompt row (a stop token ends a row and is not returned): greedy, or sampled
    at ``temperature`` with top-p TOP_P from torch's global generator. ``stop_when(new ids)`` also ends a
    row, after the token that made it true (stop strings: the caller cuts the text at the string).

    The same decoding as transformers' ``generate`` (left padding, an attention mask, a KV cache), except that
    a row that has stopped leaves the batch: ``generate`` keeps every row decoding until the longest answer
    stops, and the demo's tuned variants stop after 16-18 of their 48 tokens on average, so 40-46 % of its
    decoded row-steps were padding. bench/eval_bench.py compares both on the same prompts (the demo's 308
    terms, INST, one thread: 1.12x generate's speed at batch 32, 1.75x at 128). In fp32 the greedy
    tokens equal ``generate``'s exactly (finetune_assets_tests/phases/test_generation.py); in bf16 a row's
    arithmetic depends on the batch's shape, as it does under ``generate`` with another batch size.

    ``share_prefix``: the rows' common leading tokens (the chat template's system turn and the question's
    fixed wording: 28 of the 48 tokens of a demo definition prompt) are computed once and their KV cache is
    copied to every row; each row's own tokens follow it, left-padded after the shared part. Prefill is
    about half of an evaluation batch's work, so this saves most of it for templated prompts.
    """
    import torch
    from transformers import DynamicCache
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    shared = shared_prefix(rows) if share_prefix else 0
    with torch.inference_mode():
        if shared:
            model(input_ids=torch.tensor([rows[0][:shared]], device=device), past_key_values=cache,
                  use_cache=True, logits_to_keep=1)  # fmt: skip
            cache.batch_repeat_interleave(len(rows))
    own = [list(r[shared:]) for r in rows]
    width = max(len(r) for r in own)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in own], device=device)
    own_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in own], device=device)
    mask = torch.cat([own_mask.new_ones(len(rows), shared), own_mask], dim=1)
    positions = shared + (own_mask.cumsum(-1) - 1).clamp(min=0)
    stop = torch.tensor(stop_ids, dtype=torch.long, device=device)
    warpers = [TemperatureLogitsWarper(temperature), TopPLogitsWarper(TOP_P)] if temperature > 0 else []
    active = torch.arange(len(rows), device=device)  # batch row -> index into rows
    new: list[list[int]] = [[] for _ in rows]
    with torch.inference_mode():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        ).logits[:, -1, :]  # fmt: skip
        last = positions[:, -1:]
        for step in range(max_new_tokens):
            token = _next_token(logits, stop, warpers, hold_stop=step < (min_new_tokens or 0))
            done = torch.isin(token, stop)
            for j, (row, tok, stopped) in enumerate(
                zip(active.tolist(), token.tolist(), done.tolist(), strict=True)
            ):
                if not stopped:
                    new[row].append(tok)
                    if stop_when is not None and stop_when(new[row]):
                        done[j] = True
            keep = (~done).nonzero().flatten()
            if step == max_new_tokens - 1 or keep.numel() == 0:
                break
            if keep.numel() < active.numel():  # the stopped rows leave the batch and the cache
                cache.batch_select_indices(keep)
                active, token, mask, last = active[keep], token[keep], mask[keep], last[keep]
            mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=1)
            last = last + 1
            logits = model(
                input_ids=token[:, None], attention_mask=mask, position_ids=last, past_key_values=cache,
                use_cache=True,
            ).logits[:, -1, :]  # fmt: skip
    return new


MIN_SHARED_PREFIX = 8  # fewer common tokens are not worth a separate forward pass


def shared_prefix(rows: list[list[int]]) -> int:
    """How many leading tokens all ``rows`` share, leaving each row at least one of its own (its last
    token's logits start the decoding); 0 below MIN_SHARED_PREFIX or for a single row."""
    if len(rows) < 2:
        return 0
    n = min(len(r) for r in rows) - 1
    first = rows[0]
    for row in rows[1:]:
        i = 0
        while i < n and row[i] == first[i]:
            i += 1
        n = i
    return n if n >= MIN_SHARED_PREFIX else 0


def _next_token(logits, stop, warpers, *, hold_stop: bool):
    """Greedy (no warpers) or sampled next token of each row; ``hold_stop`` rules the stop tokens out."""
    import torch

    scores = logits.float()
    if hold_stop:
        scores[:, stop] = -float("inf")
    if not warpers:
        return scores.argmax(-1)
    for warp in warpers:
        scores = warp(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
