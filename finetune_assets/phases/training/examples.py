"""Shaping rows into what the trl trainers take: preference and KTO examples, packed pretraining text, and
the general text that continued pretraining mixes in against forgetting.
"""


def kto_rows(pairs: list[dict], binary: list[dict]) -> list[dict]:
    """Unpaired rows for KTO: the human thumbs up/down plus every preference pair split into a desirable
    (chosen) and an undesirable (rejected) completion of the same prompt (trl's unpair_preference_dataset)."""
    rows = [{"prompt": r["prompt"], "completion": r["completion"], "label": bool(r["label"])} for r in binary]
    if not pairs:
        return rows
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    paired = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    return rows + unpair_preference_dataset(paired).to_list()


def to_preference_example(row: dict) -> dict:
    """A preferences row -> trl's conversational preference format."""
    return {
        "prompt": list(row["prompt"]),
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def to_kto_example(row: dict) -> dict:
    """A binary feedback row (preference_pairs' binary_feedback.parquet) -> trl's conversational
    unpaired-preference format for KTOTrainer: {prompt: messages, completion: [assistant turn], label}."""
    return {
        "prompt": list(row["prompt"]),
        "completion": [{"role": "assistant", "content": row["completion"]}],
        "label": bool(row["label"]),
    }


def general_text(max_chars: int = 400_000) -> list[str]:
    """General-domain English for the CPT mix: docstrings of the interpreter's standard library."""
    import importlib
    import inspect

    names = [
        "os", "re", "json", "collections", "itertools", "functools", "pathlib", "string", "textwrap",
        "datetime", "logging", "argparse", "subprocess", "threading", "statistics", "random", "decimal",
        "fractions", "heapq", "bisect", "dataclasses", "enum", "contextlib", "shutil", "tempfile", "csv",
    ]  # fmt: skip
    texts, total = [], 0
    for name in names:
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - stdlib
            continue
        for obj in [
            module,
            *(v for _, v in sorted(vars(module).items()) if inspect.isclass(v) or callable(v)),
        ]:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 200:
                texts.append(doc)
                total += len(doc)
                if total >= max_chars:
                    return texts
    return texts


def pack_texts(
    tokenizer, domain: list[str], general: list[str], mix_ratio: float, block: int
) -> list[list[int]]:
    """Tokenize, join with EOS and cut into ``block``-token blocks; general text makes up ~``mix_ratio``
    of the tokens (taken in order until the share is reached)."""
    eos = tokenizer.eos_token_id

    def tokens(texts):
        for text in texts:
            yield tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]

    stream = [t for ids in tokens(domain) for t in ids]
    if mix_ratio > 0 and general:
        wanted = int(len(stream) * mix_ratio / (1 - mix_ratio))
        mixed: list[int] = []
        for ids in tokens(general):
            if len(mixed) >= wanted:
                break
            mixed.extend(ids)
        # interleave whole blocks so every part of training sees both kinds of text
        stream = _interleave(stream, mixed[:wanted], block)
    return [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)] or (
        [stream] if len(stream) > 1 else []
    )


def _interleave(a: list[int], b: list[int], block: int) -> list[int]:
    chunks_a = [a[i : i + block] for i in range(0, len(a), block)]
    chunks_b = [b[i : i + block] for i in range(0, len(b), block)]
    if not chunks_b:
        return a
    every = max(1, round(len(chunks_a) / len(chunks_b)))
    out: list[int] = []
    for i, chunk in enumerate(chunks_a):
        out.extend(chunk)
        if i % every == every - 1 and chunks_b:
            out.extend(chunks_b.pop(0))
    for chunk in chunks_b:
        out.extend(chunk)
    return out
