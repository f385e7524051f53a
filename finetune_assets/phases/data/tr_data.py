"""T&R training data: retrieval-grounded answers and tool-call conversations with REAL tool results.

    built = build_tr_examples(instructions, docs, index, cfg.retrieval, exclude_expressions=eval_exprs)
    kept, stats = fit_to_length(built.records, tokenizer_or_model_dir, cfg.tr.max_length)

Every conversation starts with the runtime's own prompt (phases.inference.tools.build_prompt: the system prompt listing
the tools, then the user turn with a ``Context:`` block), and tool calls are written with the runtime's
``format_tool_call``, so what the model learns to emit is exactly what ``TRRuntime`` parses.

python_eval conversations come from two sources: single-line doctests mined from the corpus, and synthetic
expressions (``synthetic_expressions``: random operands over ~30 templates of builtins, operators, string
and list methods). Both are run in the sandbox for their result. Expressions of the eval sets' tool-use
items are passed in ``exclude_expressions`` and never become training conversations.
"""

import ast
import hashlib
import random
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.data.records import Rows
from finetune_assets.phases.inference.retrieval import RetrievalIndex
from finetune_assets.phases.inference.sandbox import UnsafeExpression, check_expression, python_eval
from finetune_assets.phases.inference.tools import (
    build_prompt,
    eval_answer,
    eval_question,
    format_tool_call,
    passage_view,
    retrieve_passages,
    tool_message,
)

_DOCTEST_LINE = re.compile(r"^(\s*)>>> (.+?)\s*$")


def mine_doctest_expressions(docs: list[dict], exclude_doc_ids: Iterable[str] = ()) -> list[dict]:
    """Single-line ``>>> expr`` examples whose expression passes python_eval's whitelist.

    Returns [{expression, doc_id, expected}] (``expected`` = the doc's output lines, may be ""), one per
    distinct expression, in document order. Continued examples (``...`` lines), comments, bare literals and
    bare names are skipped.
    """
    excluded = set(exclude_doc_ids)
    seen, found = set(), []
    for doc in docs:
        if str(doc["id"]) in excluded:
            continue
        lines = (doc.get("text") or "").splitlines()
        for i, line in enumerate(lines):
            match = _DOCTEST_LINE.match(line)
            if not match:
                continue
            indent, expr = match.groups()
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if nxt.strip().startswith("..."):
                continue
            if "#" in expr or expr in seen:
                continue
            try:
                tree = check_expression(expr)
            except UnsafeExpression:
                continue
            if isinstance(tree.body, ast.Constant | ast.Name):
                continue
            expected = []
            for out in lines[i + 1 :]:
                if not out.strip() or out.strip().startswith(">>>"):
                    break
                expected.append(out[len(indent) :] if out.startswith(indent) else out.strip())
            seen.add(expr)
            found.append({"expression": expr, "doc_id": str(doc["id"]), "expected": "\n".join(expected)})
    return found


_WORDS = (
    "apple", "river", "python", "stone", "cloud", "tiger", "maple", "orbit", "pixel", "lemon", "north",
    "quartz", "violet", "window", "yellow", "zebra", "copper", "forest", "garden", "harbor",
)  # fmt: skip


def _ints(r: random.Random, n: int, lo: int = 0, hi: int = 200) -> list[int]:
    return r.sample(range(lo, hi), n)


def _word(r: random.Random) -> str:
    return r.choice(_WORDS)


def _letters(r: random.Random) -> str:
    return "".join(r.choices(string.ascii_lowercase, k=r.randint(5, 20)))


# Templates of the kind a user asks a calculator or a REPL; operands are random, so a small model cannot know
# the results by heart and has to call the tool. Each takes a Random and returns an expression.
_TEMPLATES: dict[str, Callable[[random.Random], str]] = {
    "add": lambda r: f"{r.randint(100, 9999)} + {r.randint(100, 9999)}",
    "sub": lambda r: f"{r.randint(100, 9999)} - {r.randint(100, 9999)}",
    "mul": lambda r: f"{r.randint(11, 999)} * {r.randint(11, 99)}",
    "floordiv": lambda r: f"{r.randint(1000, 99999)} // {r.randint(7, 97)}",
    "mod": lambda r: f"{r.randint(1000, 99999)} % {r.randint(7, 97)}",
    "pow": lambda r: f"{r.randint(2, 13)} ** {r.randint(3, 9)}",
    "divmod": lambda r: f"divmod({r.randint(1000, 9999)}, {r.randint(7, 97)})",
    "round": lambda r: f"round({r.randint(1, 999)} / {r.randint(3, 97)}, {r.randint(1, 3)})",
    "abs": lambda r: f"abs({r.randint(-9999, -10)} + {r.randint(1, 999)})",
    "sum": lambda r: f"sum({_ints(r, r.randint(3, 7), 0, 999)})",
    "min": lambda r: f"min({_ints(r, r.randint(4, 8), -99, 999)})",
    "max": lambda r: f"max({_ints(r, r.randint(4, 8), -99, 999)})",
    "sorted": lambda r: f"sorted({_ints(r, r.randint(3, 7))})",
    "sorted_rev": lambda r: f"sorted({_ints(r, r.randint(3, 7))}, reverse=True)",
    "len_list": lambda r: f"len({_ints(r, r.randint(3, 12), 0, 99)})",
    "len_str": lambda r: f"len({_letters(r)!r})",
    "reverse_list": lambda r: f"{_ints(r, r.randint(3, 6), 0, 99)}[::-1]",
    "slice": lambda r: f"{_ints(r, 8, 0, 99)}[{r.randint(0, 3)}:{r.randint(4, 7)}]",
    "index": lambda r: (lambda xs: f"{xs}.index({r.choice(xs)})")(_ints(r, r.randint(4, 8), 0, 99)),
    "range": lambda r: f"list(range({r.randint(0, 20)}, {r.randint(30, 60)}, {r.randint(3, 9)}))",
    "squares": lambda r: f"[n * n for n in range({r.randint(3, 9)})]",
    "set_and": lambda r: f"sorted(set({_ints(r, 6, 0, 20)}) & set({_ints(r, 6, 0, 20)}))",
    "upper": lambda r: f"{_word(r)!r}.upper()",
    "title": lambda r: f"{_word(r) + ' ' + _word(r)!r}.title()",
    "reverse_str": lambda r: f"{_word(r)!r}[::-1]",
    "count": lambda r: (lambda w: f"{w!r}.count({r.choice(w)!r})")(_letters(r)),
    "replace": lambda r: (lambda w: f"{w!r}.replace({w[0]!r}, {r.choice('xyz')!r})")(_word(r)),
    "split": lambda r: f"{', '.join(r.sample(_WORDS, 3))!r}.split(', ')",
    "join": lambda r: f"{r.choice('-_/+')!r}.join({r.sample(_WORDS, 3)})",
    "hex": lambda r: f"hex({r.randint(16, 65535)})",
    "bin": lambda r: f"bin({r.randint(2, 1023)})",
    "int_base": lambda r: f"int({format(r.randint(16, 65535), 'x')!r}, 16)",
    "ord": lambda r: f"ord({r.choice(string.ascii_letters)!r})",
    "zfill": lambda r: f"str({r.randint(1, 9999)}).zfill({r.randint(5, 8)})",
}


def synthetic_expressions(n: int, seed: int = 0, exclude: Iterable[str] = ()) -> list[dict]:
    """``n`` distinct random expressions [{expression, template}], cycling through ``_TEMPLATES`` so every
    kind is represented; expressions in ``exclude`` (the eval items') are skipped."""
    rng = random.Random(f"tr-synthetic-{seed}")  # a stream of its own: never the eval sets' generator
    excluded, seen, out = set(exclude), set(), []
    names = sorted(_TEMPLATES)
    attempts = 0
    while len(out) < n and attempts < 20 * n + 100:
        name = names[attempts % len(names)]
        attempts += 1
        expression = _TEMPLATES[name](rng)
        if expression in seen or expression in excluded:
            continue
        seen.add(expression)
        out.append({"expression": expression, "template": name})
    return out


def _question_answer(row: dict) -> tuple[str, str] | None:
    messages = row.get("messages") or []
    users = [m["content"] for m in messages if m.get("role") == "user"]
    answers = [m["content"] for m in messages if m.get("role") == "assistant"]
    if not users or not answers or not users[-1].strip() or not answers[-1].strip():
        return None
    return users[-1].strip(), answers[-1].strip()


def _stable_id(*parts: str) -> str:
    return "tr-" + hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:16]


def _hash_split(key: str, validation_fraction: float) -> str:
    bucket = int(hashlib.sha1(key.encode()).hexdigest(), 16) % 10_000
    return "validation" if bucket < validation_fraction * 10_000 else "train"


def python_eval_conversation(
    expression: str, result: str, index: RetrievalIndex, cfg: RetrievalConfig, excluded: set[str]
) -> list[dict]:
    """Runtime prompt (with its Context block) -> python_eval call -> the real result -> the answer."""
    question = eval_question(expression)
    messages = build_prompt(question, retrieve_passages(index, question, cfg.top_k, excluded), cfg)
    return messages + [
        {"role": "assistant", "content": format_tool_call("python_eval", {"expression": expression})},
        tool_message({"ok": True, "result": result}),
        {"role": "assistant", "content": eval_answer(expression, result)},
    ]


def _python_eval_records(
    docs, index, cfg, excluded, exclude_expressions, want, rng, seed, eval_timeout_s
) -> tuple[list[dict], dict]:
    """Up to ``want`` python_eval conversations: a ``1 - cfg.synthetic_expression_fraction`` share from the
    corpus' doctests (as many as there are), synthetic expressions for the rest. Only expressions the sandbox
    evaluates to a short result are kept."""
    candidates = [
        c for c in mine_doctest_expressions(docs, excluded) if c["expression"] not in exclude_expressions
    ]
    rng.shuffle(candidates)
    want_doctest = min(len(candidates), want - round(want * cfg.synthetic_expression_fraction))
    records, evaluated, matches = [], 0, 0

    def add(expression: str, source: str, topic: str) -> bool:
        nonlocal evaluated
        result = python_eval(expression, timeout_s=eval_timeout_s)
        evaluated += 1
        if not result.get("ok") or result.get("truncated") or len(result["result"]) > 200:
            return False
        records.append(
            {
                "id": _stable_id("python_eval", expression),
                "messages": python_eval_conversation(expression, result["result"], index, cfg, excluded),
                "source": source,
                "topic": topic,
                "generator": "tr_python_eval",
                "split": _hash_split(expression, cfg.tool_validation_fraction),
                "result": result["result"],
            }
        )
        return True

    for cand in candidates:
        if len(records) >= want_doctest or evaluated >= 4 * want_doctest + 20:
            break
        if add(cand["expression"], cand["doc_id"], f"doctest:{cand['doc_id']}"):
            matches += records[-1]["result"] == cand["expected"].strip()
    from_doctests = len(records)
    missing = want - from_doctests
    synthetic = synthetic_expressions(2 * missing + 10, seed, exclude_expressions) if missing > 0 else []
    for cand in synthetic:
        if len(records) >= want:
            break
        add(cand["expression"], "synthetic", f"synthetic:{cand['template']}")
    for record in records:
        del record["result"]
    stats = {
        "doctest_candidates": len(candidates),
        "doctest_ok": from_doctests,
        "doctest_matches_doc_output": matches,
        "synthetic_expressions": len(records) - from_doctests,
        "python_eval_evaluated": evaluated,
    }
    return records, stats


def build_tr_examples(
    instructions: list[dict],
    docs: list[dict],
    index: RetrievalIndex,
    cfg: RetrievalConfig,
    seed: int = 0,
    exclude_doc_ids: Iterable[str] = (),
    exclude_expressions: Iterable[str] = (),
    eval_timeout_s: float = 2.0,
) -> Rows:
    """Training conversations for the T&R model, in the instruction contract. Returns Rows(records, stats).

    Three kinds, mixed and capped at ``cfg.max_tr_examples`` (shares: ``cfg.tool_use_fraction``,
    ``cfg.search_tool_fraction``, the rest grounded; missing tool examples are filled with grounded ones):
    - ``tr_grounded``: system prompt + Context block of the ``cfg.top_k`` passages retrieved for the
      instruction's question -> the instruction's reference answer.
    - ``tr_python_eval``: a doctest or synthetic expression -> python_eval tool call -> the REAL result from
      the sandbox -> an answer quoting it. Also gets a Context block, like every runtime prompt.
    - ``tr_search_docs``: the question without a Context block -> search_docs tool call -> the real passages
      -> the reference answer (what the model should do when no context was given). Never a safety row:
      those are grounded, so the refusals (and benign answers) hold under the T&R prompt too.
    Instruction-based records keep their instruction's split and topic; python_eval records get a stable
    hash-based split. ``exclude_doc_ids`` (eval sets' excluded_doc_ids) keeps those documents out of the mined
    doctests and the passages; ``exclude_expressions`` (the eval tool-use items') keeps those expressions out.
    """
    rng = random.Random(seed)
    excluded, excluded_exprs = set(exclude_doc_ids), set(exclude_expressions)
    qa, skipped = [], 0
    for row in instructions:
        pair = _question_answer(row)
        if pair is None:
            skipped += 1
        else:
            qa.append((row, *pair))
    rng.shuffle(qa)

    total = cfg.max_tr_examples
    want_eval = round(total * cfg.tool_use_fraction)
    want_search = min(round(total * cfg.search_tool_fraction), len(qa) // 2)
    eval_records, eval_stats = _python_eval_records(
        docs, index, cfg, excluded, excluded_exprs, want_eval, rng, seed, eval_timeout_s
    )

    # search_docs conversations, then grounded answers fill the rest.
    search_records, grounded_records, source_hits, source_total = [], [], 0, 0
    want_grounded = total - len(eval_records) - want_search
    for row, question, answer in qa:
        # A safety row (a harmful request or its benign look-alike) is never a search: it keeps its refusal
        # or its answer under the T&R prompt, so the tool-using variant refuses like the others.
        searchable = row.get("generator") != "safety"
        if searchable and len(search_records) < want_search:
            call = {"name": "search_docs", "arguments": {"query": question, "k": cfg.top_k}}
            # What run_tool(call) returns, minus the passages of excluded documents.
            hits = retrieve_passages(index, question, cfg.top_k, excluded)
            result = {"ok": True, "results": [passage_view(h, cfg.passage_chars) for h in hits]}
            messages = build_prompt(question, [], cfg) + [
                {"role": "assistant", "content": format_tool_call(**call)},
                tool_message(result),
                {"role": "assistant", "content": answer},
            ]
            kind, out = "tr_search_docs", search_records
        elif len(grounded_records) < want_grounded:
            passages = retrieve_passages(index, question, cfg.top_k, excluded)
            source_total += searchable  # recall of the row's own document; safety rows have none
            source_hits += searchable and any(p["doc_id"] == str(row.get("source")) for p in passages)
            messages = build_prompt(question, passages, cfg) + [{"role": "assistant", "content": answer}]
            kind, out = "tr_grounded", grounded_records
        elif len(search_records) >= want_search:
            break  # both kinds are full
        else:
            continue  # grounded is full but search is not: look on for a searchable (non-safety) row
        out.append(
            {
                "id": _stable_id(kind, str(row.get("id"))),
                "messages": messages,
                "source": str(row.get("source") or ""),
                "topic": str(row.get("topic") or ""),
                "generator": kind,
                "split": row.get("split") or "train",
            }
        )

    records = eval_records + search_records + grounded_records
    rng.shuffle(records)
    stats = {
        "records": len(records),
        "by_kind": dict(Counter(r["generator"] for r in records)),
        "by_split": dict(Counter(r["split"] for r in records)),
        "instructions_used": len(search_records) + len(grounded_records),
        "instructions_skipped": skipped,
        **eval_stats,
        # How often the instruction's own source document was among the retrieved passages (recall@top_k).
        "source_recall_at_k": round(source_hits / source_total, 4) if source_total else None,
    }
    return Rows(records, stats)


def conversation_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of ``messages`` rendered by the chat template, as SFT tokenizes them."""
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def fit_to_length(records: list[dict], tokenizer, max_length: int) -> tuple[list[dict], dict]:
    """Drop conversations longer than ``max_length`` tokens: SFT keeps the first max_length tokens, which
    would cut the final answer (or the tool call) off and teach the model to stop mid-turn.

    ``tokenizer``: a tokenizer or a model folder to load it from. Returns (kept, {tokens_max, tokens_mean,
    over_max_length, over_max_length_by_kind}).
    """
    if isinstance(tokenizer, str | Path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    lengths = [conversation_tokens(tokenizer, r["messages"]) for r in records]
    kept = [r for r, n in zip(records, lengths, strict=True) if n <= max_length]
    over = Counter(r["generator"] for r, n in zip(records, lengths, strict=True) if n > max_length)
    stats = {
        "tokens_max": max(lengths, default=0),
        "tokens_mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
        "over_max_length": sum(over.values()),
        "over_max_length_by_kind": dict(over),
    }
    return kept, stats


@dataclass(frozen=True)
class TRExamples:
    records: list[dict]  # the conversations that fit max_length, each with its split
    path: Path  # the same records as Parquet
    stats: dict  # build_tr_examples' counts
    lengths: dict  # fit_to_length's token statistics


def prepare(
    instructions: list[dict],
    docs: list[dict],
    index_dir: Path,
    retrieval_cfg: RetrievalConfig,
    *,
    tool_use_eval_items: list[dict],
    tokenizer_dir: Path,
    max_length: int,
    out_path: Path,
    seed: int = 0,
) -> TRExamples:
    """The tr_model asset's training data as one call: T&R conversations over ``docs`` (training-side) and
    the retrieval index, without any held-out tool-use expression, cut to those that fit ``max_length``
    (longer ones would lose their last turns to truncation), written to ``out_path``."""
    built = build_tr_examples(
        instructions,
        docs,
        RetrievalIndex.load(index_dir),
        retrieval_cfg,
        seed=seed,
        exclude_expressions=[item["expression"] for item in tool_use_eval_items],
    )
    records, lengths = fit_to_length(built.records, tokenizer_dir, max_length)
    path = io.write_records_parquet(records, out_path)
    return TRExamples(records, path, built.stats, lengths)
