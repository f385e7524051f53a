"""Length and token statistics of chat datasets, with a histogram image (instruction_set's metadata).

Tokens are counted with the base model's tokenizer over the rendered chat template, the same text SFT trains
on, so the share of examples longer than ``sft.max_length`` (which training truncates) is exact.
"""

import base64
from collections.abc import Callable
from pathlib import Path

import numpy as np

from finetune_assets import io
from finetune_assets.phases.inference.generation import render_chat

CountTokens = Callable[[list[dict]], int]  # messages -> tokens


def _summary(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    arr = np.asarray(values)
    return {
        "count": len(values),
        "mean": round(float(arr.mean()), 1),
        "p50": int(np.percentile(arr, 50)),
        "p90": int(np.percentile(arr, 90)),
        "p99": int(np.percentile(arr, 99)),
        "max": int(arr.max()),
    }


def chat_token_counter(model_dir: Path) -> CountTokens:
    """messages -> tokens of the rendered chat template, with the tokenizer of the model in ``model_dir``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count(messages: list[dict]) -> int:
        return len(tokenizer(render_chat(tokenizer, messages), add_special_tokens=False)["input_ids"])

    return count


def length_stats(
    records: list[dict], count_tokens: CountTokens | None, max_length: int | None = None
) -> dict:
    """{prompt_chars, response_chars, total_tokens, response_tokens: {count, mean, p50, p90, p99, max},
    over_max_length: share of examples with more tokens than ``max_length``} plus the raw lists under
    "_values" for the histogram. Prompt = every turn before the final assistant turn."""
    prompt_chars, response_chars, total_tokens, response_tokens = [], [], [], []
    for rec in records:
        messages = rec["messages"]
        prompt_chars.append(sum(len(m["content"]) for m in messages[:-1]))
        response_chars.append(len(messages[-1]["content"]))
        if count_tokens is not None:
            total = count_tokens(messages)
            total_tokens.append(total)
            response_tokens.append(total - count_tokens(messages[:-1]))
    stats = {"prompt_chars": _summary(prompt_chars), "response_chars": _summary(response_chars)}
    if count_tokens is not None:
        stats["total_tokens"] = _summary(total_tokens)
        stats["response_tokens"] = _summary(response_tokens)
        if max_length and total_tokens:
            stats["over_max_length"] = round(sum(t > max_length for t in total_tokens) / len(total_tokens), 4)
    stats["_values"] = {
        "prompt_chars": prompt_chars,
        "response_chars": response_chars,
        "total_tokens": total_tokens,
        "response_tokens": response_tokens,
    }
    return stats


def write_histogram(stats: dict, path: Path, max_length: int | None = None, title: str = "") -> Path:
    """PNG with one histogram per measured length (tokens when counted, characters otherwise), written
    atomically; a dashed line marks ``max_length`` on the total-token panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = stats["_values"]
    panels = [k for k in ("total_tokens", "response_tokens") if values.get(k)] or [
        "prompt_chars",
        "response_chars",
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.4), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        ax.hist(values[key], bins=40, color="#4C72B0")
        ax.set_xlabel(key.replace("_", " "))
        ax.set_ylabel("examples")
        if key == "total_tokens" and max_length:
            ax.axvline(max_length, color="#C44E52", linestyle="--", label=f"max_length {max_length}")
            ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    try:
        return io.write_figure(fig, path, dpi=100)
    finally:
        plt.close(fig)


def markdown_image(path: Path, alt: str) -> str:
    """The PNG inline as Markdown (a data URI), which the Dagster UI renders in asset metadata."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{alt}](data:image/png;base64,{data})"


def public(stats: dict) -> dict:
    """``stats`` without the raw value lists (what goes into JSON and metadata)."""
    return {k: v for k, v in stats.items() if k != "_values"}
