"""Tool-use accuracy: the T&R runtime answers the held-out tool questions, and an answer counts when it holds
the value the sandbox computes for the expression.
"""

import re

from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.inference.tools import TRRuntime


def tool_use_accuracy(
    generate_fn, index, items: list[dict], retrieval_cfg: RetrievalConfig | None, *, max_new_tokens: int
) -> tuple[dict, list[dict]]:
    """Answer the tool-use questions through the T&R runtime (retrieval in the prompt, tools executed) with
    any variant's generate function: the same footing for every variant.

    correct = the final answer contains the expected value (the sandbox's result for the expression).
    Returns ({"tool_use/accuracy", "tool_use/call_rate", "tool_use/n"}, per-item rows).
    """

    runtime = TRRuntime(
        None, index, cfg=retrieval_cfg, max_new_tokens=max_new_tokens, generate_fn=generate_fn
    )
    replies = runtime.answer_batch([item["question"] for item in items])
    rows = []
    for item, reply in zip(items, replies, strict=True):
        called = any(call["name"] == "python_eval" for call in reply["tool_calls"])
        rows.append(
            {
                "id": item["id"],
                "expression": item["expression"],
                "expected": item["expected"],
                "answer": reply["answer"],
                "called_python_eval": called,
                "correct": _contains_value(reply["answer"], item["expected"], item["expression"]),
            }
        )
    n = len(rows)
    metrics = {
        "tool_use/accuracy": sum(r["correct"] for r in rows) / n if n else float("nan"),
        "tool_use/call_rate": sum(r["called_python_eval"] for r in rows) / n if n else float("nan"),
        "tool_use/n": float(n),
    }
    return metrics, rows


def _contains_value(answer: str, expected: str, expression: str) -> bool:
    """The expected repr appears in the answer, ignoring spaces and quote style ('a' vs "a"), once the
    expression itself is taken out: echoing `max([.., 42, 1])` must not count as answering 42."""

    def squash(text: str) -> str:
        return re.sub(r"\s+", "", text).replace('"', "'")

    return bool(expected) and squash(expected) in squash(answer).replace(squash(expression), "")
