"""The hallucination index: the share of glossary terms a variant defines correctly, plus the decode-speed
measurement that runs on the same prompts.

``hallucination_index`` asks one question per glossary row (``definition_conversations``), decodes the
answers in batches and lets phases.evaluation.judge decide each one. ``decode_speed`` decodes a fixed number
of tokens per prompt so that variants with short answers and long ones are timed alike. (Perplexity is
lm-eval's rolling loglikelihood: phases.evaluation.lm_eval_tasks.)
"""

import time

from finetune_assets.phases.evaluation.judge import judge_definitions
from finetune_assets.phases.inference.generation import GenerateFn, chat_generator, generate_chat

DEFINITION_PROMPT = "In Python, what does the term '{term}' mean? Answer in one or two sentences."

MODULE_PROMPT = "In Python, what is the {term} module for? Answer in one sentence."


def definition_conversations(glossary: list[dict]) -> list[list[dict]]:
    """One question per glossary row: a term's meaning, or what a module (kind "module") is for."""
    return [
        [{"role": "user", "content": (MODULE_PROMPT if g.get("kind") == "module" else DEFINITION_PROMPT).format(
            term=g["term"]
        )}]
        for g in glossary
    ]  # fmt: skip


def count_tokens(tokenizer, texts: list[str]) -> int:
    if tokenizer is None:
        return sum(len(t.split()) for t in texts)
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def hallucination_index(
    model,
    tokenizer,
    glossary: list[dict],
    *,
    max_new_tokens: int,
    batch_size: int,
    rouge_threshold: float,
    embedder=None,
    embed_threshold: float | None = None,
    generate_fn: GenerateFn | None = None,
) -> dict:
    """Ask the model to define every glossary term and judge the answers (``judge_definitions``).

    Returns {index: share of terms defined correctly (0..1, None without terms), n_terms, n_correct,
    mean_rouge_l, mean_similarity, per_term: [{id, term, reference, generated, rouge_l, similarity, correct}],
    generation: {wall_s, latency_s (wall / prompts), new_tokens, tokens_per_s}}. new_tokens counts the tokens
    of the returned (stripped) answers: a model that only emits whitespace or end-of-turn gets ~0 tokens/s.
    ``generate_fn`` (default: the model's phases.inference.generation.chat_generator) is injectable for tests.
    """
    generate_fn = generate_fn or chat_generator(model, tokenizer, batch_size)
    conversations = definition_conversations(glossary)
    started = time.perf_counter()
    generated = generate_fn(conversations, max_new_tokens) if glossary else []
    wall = time.perf_counter() - started
    generated = [(g or "").strip() for g in generated]
    if len(generated) != len(glossary):
        raise RuntimeError(f"generation returned {len(generated)} texts for {len(glossary)} prompts")
    new_tokens = count_tokens(tokenizer, generated)
    refs = [str(g["definition"]) for g in glossary]
    verdicts = judge_definitions(
        refs, generated, rouge_threshold=rouge_threshold, embedder=embedder, embed_threshold=embed_threshold
    )
    per_term = [
        {"id": g.get("id"), "term": g["term"], "reference": ref, "generated": gen, **v}
        for g, ref, gen, v in zip(glossary, refs, generated, verdicts, strict=True)
    ]
    n = len(per_term)
    sims = [r["similarity"] for r in per_term if r["similarity"] is not None]
    return {
        "index": (sum(r["correct"] for r in per_term) / n) if n else None,
        "n_terms": n,
        "n_correct": sum(r["correct"] for r in per_term),
        "mean_rouge_l": (sum(r["rouge_l"] for r in per_term) / n) if n else None,
        "mean_similarity": (sum(sims) / len(sims)) if sims else None,
        "per_term": per_term,
        "generation": {
            "wall_s": wall,
            "latency_s": wall / n if n else None,
            "new_tokens": new_tokens,
            "tokens_per_s": new_tokens / wall if wall > 0 and n else None,
        },
    }


def decode_speed(model, tokenizer, conversations: list[list[dict]], *, tokens: int, batch_size: int) -> dict:
    """Greedy decoding of ``conversations`` for exactly ``tokens`` new tokens each (end-of-turn held back),
    timed: {"generation/decode_tokens_per_s_fixed", "generation/decode_fixed_tokens",
    "generation/decode_fixed_prompts"}; {} when there is nothing to time. Every variant decodes the same
    number of tokens for the same prompts, so the number compares speed, not answer length."""

    if not conversations or tokens <= 0:
        return {}
    started = time.perf_counter()
    generate_chat(model, tokenizer, conversations, tokens, batch_size=batch_size, min_new_tokens=tokens)
    wall = time.perf_counter() - started
    return {
        "generation/decode_tokens_per_s_fixed": tokens * len(conversations) / wall if wall > 0 else None,
        "generation/decode_fixed_tokens": float(tokens),
        "generation/decode_fixed_prompts": float(len(conversations)),
    }
