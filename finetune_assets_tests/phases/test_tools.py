"""The python_eval sandbox, the tool-call protocol, T&R training data and the T&R runtime."""

import json
import time

import pytest

from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.retrieval import RetrievalIndex, chunk_documents
from finetune_assets.phases.tools import (
    TRRuntime,
    build_prompt,
    build_tr_examples,
    check_expression,
    format_tool_call,
    mine_doctest_expressions,
    parse_tool_call,
    python_eval,
    run_tool,
    system_prompt,
    tool_specs,
)

# A reST page with doctests: some evaluable, some that the sandbox must refuse, one with a WRONG documented
# output (the tool result must be the real value, not the doc's text) and one multi-line example.
DOCTEST_RST = """\
String and list helpers
=======================

.. function:: sorted(iterable)

   Return a new sorted list::

      >>> sorted([3, 1, 2])
      [1, 2, 3]
      >>> 'a-b'.split('-')
      ['a', 'b']
      >>> 2 ** 10
      1000
      >>> import os
      >>> x = 5
      >>> len(x)
      1
      >>> open('/etc/passwd').read()
      'secret'
      >>> [n * n for n in range(4)
      ...  if n]
      [1, 4, 9]
      >>> 42
      42
"""

CFG = RetrievalConfig(chunk_words=40, chunk_overlap=5, top_k=2, passage_chars=120, max_tr_examples=8)


@pytest.fixture(scope="module")
def docs(tiny_corpus) -> list[dict]:
    rows = [
        {"id": f"doc{i}", "text": t, "source": f"doc{i}.rst", "title": f"Doc {i}"}
        for i, t in enumerate(tiny_corpus)
    ]
    return rows + [
        {"id": "doctests", "text": DOCTEST_RST, "source": "library/helpers.rst", "title": "Helpers"}
    ]


@pytest.fixture(scope="module")
def index(docs) -> RetrievalIndex:
    return RetrievalIndex.from_chunks(chunk_documents(docs, CFG))


# --- python_eval --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sorted([3,1,2])", "[1, 2, 3]"),
        ("'a-b'.split('-')", "['a', 'b']"),
        ("2**10", "1024"),
        ("sorted(['bb', 'a', 'ccc'], key=lambda s: -len(s))", "['ccc', 'bb', 'a']"),
        ("{k: v for k, v in zip('ab', range(2))}", "{'a': 0, 'b': 1}"),
        ("divmod(17, 5), round(2.675, 2), 'x'.join(['1', '2']).upper()", "((3, 2), 2.67, '1X2')"),
    ],
)
def test_python_eval_computes_real_results(expression, expected):
    assert python_eval(expression) == {"ok": True, "result": expected}


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "().__class__.__bases__[0].__subclasses__()",
        "(lambda: 0).__globals__",
        "open('/etc/passwd')",
        "'{0.__class__}'.format(1)",  # format strings reach attributes without passing the AST check
        "getattr(1, 'real')",
        "x = 1",
        "import os",
        "exec('1')",
        "",
    ],
)
def test_python_eval_refuses_unsafe_expressions(expression):
    result = python_eval(expression)
    assert result["ok"] is False and result["error"].startswith("refused")


@pytest.mark.parametrize("expression", ["10**10**10", "sum(range(10**12))"])
def test_python_eval_stops_runaway_computations(expression):
    start = time.monotonic()
    result = python_eval(expression, timeout_s=1.0)
    assert result["ok"] is False and "timeout" in result["error"]
    assert time.monotonic() - start < 5


def test_python_eval_reports_runtime_errors_and_memory_limits():
    assert python_eval("1 / 0") == {"ok": False, "error": "ZeroDivisionError: division by zero"}
    assert python_eval("[0] * 10**10")["error"].startswith("MemoryError")
    assert "list(...)" in python_eval("map(abs, [1])")["error"]


def test_check_expression_allows_comprehension_variables_but_not_free_names():
    check_expression("[n + 1 for n in range(3)]")
    with pytest.raises(ValueError, match="name 'n'"):
        check_expression("n + 1")


# --- protocol and registry ----------------------------------------------------------------------------------


def test_parse_tool_call_round_trips_and_tolerates_model_formatting():
    call = {"name": "python_eval", "arguments": {"expression": "len('abc')"}}
    assert parse_tool_call(format_tool_call(**call)) == call
    # The chat template's own rendering puts newlines inside the tags; models also drop the closing tag
    # or encode the arguments as a JSON string (as the OpenAI API does).
    assert parse_tool_call(
        'Let me check.\n<tool_call>\n{"name": "search_docs", "arguments": {"query": "x"}}\n</tool_call>'
    ) == {
        "name": "search_docs",
        "arguments": {"query": "x"},
    }
    assert parse_tool_call('<tool_call>{"name": "search_docs", "arguments": {"query": "y"}}') is not None
    assert parse_tool_call('<tool_call>{"name": "a", "arguments": "{\\"k\\": 1}"}</tool_call>') == {
        "name": "a",
        "arguments": {"k": 1},
    }
    bad_calls = [
        "no call here",
        "<tool_call>{not json}</tool_call>",
        '<tool_call>{"arguments": {}}</tool_call>',
        '<tool_call>{"name": "a", "arguments": [1]}</tool_call>',
        '<tool_call>["a"]</tool_call>',
    ]
    for bad in bad_calls:
        assert parse_tool_call(bad) is None


def test_tool_registry_is_in_openai_format_and_listed_in_the_system_prompt():
    specs = {s["function"]["name"]: s for s in tool_specs()}
    assert set(specs) == {"search_docs", "python_eval"}
    for spec in specs.values():
        assert spec["type"] == "function" and spec["function"]["parameters"]["type"] == "object"
    prompt = system_prompt()
    assert "search_docs(query: string, k: integer)" in prompt and "python_eval(expression: string)" in prompt
    assert "<tool_call>" in prompt


def test_run_tool_executes_both_tools_and_reports_bad_calls(index):
    found = run_tool({"name": "search_docs", "arguments": {"query": "immutable tuple", "k": 1}}, index, CFG)
    assert found["ok"] and len(found["results"]) == 1 and "tuple" in found["results"][0]["text"].lower()
    assert (
        run_tool({"name": "python_eval", "arguments": {"expression": "abs(-3)"}}, index, CFG)["result"] == "3"
    )
    assert "unknown tool" in run_tool({"name": "rm", "arguments": {}}, index, CFG)["error"]
    assert "bad arguments" in run_tool({"name": "search_docs", "arguments": {}}, index, CFG)["error"]


# --- training data ------------------------------------------------------------------------------------------


def test_mine_doctests_keeps_only_safe_single_line_expressions(docs):
    mined = mine_doctest_expressions(docs)
    assert [m["expression"] for m in mined] == ["sorted([3, 1, 2])", "'a-b'.split('-')", "2 ** 10"]
    assert mined[0] == {"expression": "sorted([3, 1, 2])", "doc_id": "doctests", "expected": "[1, 2, 3]"}
    assert mine_doctest_expressions(docs, exclude_doc_ids={"doctests"}) == []


def test_build_tr_examples_mixes_grounded_search_and_real_tool_results(docs, index, tiny_chat_rows):
    rows = [dict(r) for r in tiny_chat_rows]
    rows[0]["split"] = "validation"
    cfg = CFG.model_copy(update={"tool_use_fraction": 0.375, "search_tool_fraction": 0.25})
    out = build_tr_examples(rows, docs, index, cfg, seed=0)
    records, stats = out["records"], out["stats"]

    assert len(records) == cfg.max_tr_examples == stats["records"]
    assert stats["by_kind"] == {"tr_python_eval": 3, "tr_search_docs": 2, "tr_grounded": 3}
    assert stats["doctest_ok"] == 3 and stats["doctest_matches_doc_output"] == 2  # the doc's 1000 is wrong
    assert len({r["id"] for r in records}) == len(records)
    for r in records:
        assert set(r) == {"id", "messages", "source", "topic", "generator", "split"}
        assert r["messages"][0] == {"role": "system", "content": system_prompt()}
        assert r["messages"][-1]["role"] == "assistant"

    evals = {parse_tool_call(r["messages"][2]["content"])["arguments"]["expression"]: r for r in records
             if r["generator"] == "tr_python_eval"}  # fmt: skip
    power = evals["2 ** 10"]["messages"]
    assert [m["role"] for m in power] == ["system", "user", "assistant", "tool", "assistant"]
    assert power[1]["content"].endswith("What does the Python expression `2 ** 10` evaluate to?")
    assert json.loads(power[3]["content"]) == {
        "ok": True,
        "result": "1024",
    }  # computed, not copied from the doc
    assert "`1024`" in power[4]["content"]
    assert evals["'a-b'.split('-')"]["messages"][3]["content"] == json.dumps(
        {"ok": True, "result": "['a', 'b']"}
    )

    by_question = {r["messages"][1]["content"].rsplit("Question: ", 1)[-1]: r for r in records}
    answers = {r["messages"][1]["content"]: (r["messages"][2]["content"], r) for r in rows}
    for r in records:
        if r["generator"] == "tr_grounded":
            user = r["messages"][1]["content"]
            assert user.startswith("Context:\n[1] ") and "\n\nQuestion: " in user
            question = user.rsplit("Question: ", 1)[-1]
            assert r["messages"][2]["content"] == answers[question][0] and len(r["messages"]) == 3
            assert r["split"] == answers[question][1]["split"] and r["topic"] == answers[question][1]["topic"]
        elif r["generator"] == "tr_search_docs":
            question = r["messages"][1]["content"]
            assert question in answers  # no Context block: the model has to search
            call = parse_tool_call(r["messages"][2]["content"])
            assert call == {"name": "search_docs", "arguments": {"query": question, "k": 2}}
            assert json.loads(r["messages"][3]["content"])["results"]
            assert r["messages"][4]["content"] == answers[question][0]
    assert by_question  # every record was indexed by its question
    assert build_tr_examples(rows, docs, index, cfg, seed=0)["records"] == records  # deterministic
    assert {r["split"] for r in records if r["source"] == "doc0"} <= {"validation"}


def test_build_tr_examples_keeps_excluded_documents_out(docs, index, tiny_chat_rows):
    cfg = CFG.model_copy(update={"top_k": 3})
    excluded = {"doctests", "doc0", "doc1"}
    out = build_tr_examples(tiny_chat_rows, docs, index, cfg, exclude_doc_ids=excluded)
    assert out["stats"]["by_kind"].get("tr_python_eval", 0) == 0
    assert out["records"]
    text = json.dumps(out["records"])
    assert "Use append to add an item" not in text  # doc0's passage
    assert "Tuples are often used" not in text  # doc1's passage
    # Control: without the exclusion the same passage does reach the training data.
    assert "Tuples are often used" in json.dumps(
        build_tr_examples(tiny_chat_rows, docs, index, cfg)["records"]
    )


# --- runtime ------------------------------------------------------------------------------------------------


class ScriptedModel:
    """A fake generate_fn: returns the scripted outputs in turn and records every conversation it saw."""

    def __init__(self, *outputs: str):
        self.outputs, self.calls = list(outputs), []

    def __call__(self, conversations, max_new_tokens):
        self.calls.append([list(c) for c in conversations])
        return [self.outputs.pop(0) for _ in conversations]


def test_runtime_runs_the_tool_and_feeds_the_result_back(index):
    model = ScriptedModel(
        'I will compute it. <tool_call>{"name": "python_eval", "arguments": {"expression": "sum([1, 2, 3])"}}'
        "</tool_call> trailing text the model should not have written",
        "The sum is 6.",
    )
    runtime = TRRuntime(None, index, cfg=CFG, generate_fn=model)
    out = runtime.answer("What is the sum of a list of numbers?")

    assert out["answer"] == "The sum is 6."
    assert out["tool_calls"] == [
        {
            "name": "python_eval",
            "arguments": {"expression": "sum([1, 2, 3])"},
            "result": {"ok": True, "result": "6"},
        }
    ]
    assert len(model.calls) == 2
    second = model.calls[1][0]
    assert second[:2] == build_prompt("What is the sum of a list of numbers?", out["passages"], CFG)
    expected_call = format_tool_call("python_eval", {"expression": "sum([1, 2, 3])"})
    assert second[2] == {"role": "assistant", "content": f"I will compute it. {expected_call}"}
    assert second[3] == {"role": "tool", "content": '{"ok": true, "result": "6"}'}
    assert out["passages"] and out["messages"][-1] == {"role": "assistant", "content": "The sum is 6."}


def test_runtime_prompt_matches_training_prompt(docs, index, tiny_chat_rows):
    cfg = CFG.model_copy(update={"tool_use_fraction": 0.0, "search_tool_fraction": 0.0})
    records = build_tr_examples(tiny_chat_rows[:3], docs, index, cfg)["records"]
    question = records[0]["messages"][1]["content"].rsplit("Question: ", 1)[-1]
    model = ScriptedModel("answer")
    TRRuntime(None, index, cfg=cfg, generate_fn=model).answer(question)
    assert model.calls[0][0] == records[0]["messages"][:2]


def test_runtime_stops_after_max_tool_rounds_and_batches_only_active_questions(index):
    call = format_tool_call("search_docs", {"query": "generator yield"})
    model = ScriptedModel(call, "A direct answer.", f"still searching {call}")
    runtime = TRRuntime(None, index, cfg=CFG, max_tool_rounds=1, generate_fn=model)
    first, second = runtime.answer_batch(["What is a generator?", "What is a set?"])

    assert [len(c) for c in model.calls] == [2, 1]  # only the tool-calling question goes on
    assert second["answer"] == "A direct answer." and second["tool_calls"] == []
    assert len(first["tool_calls"]) == 1 and first["tool_calls"][0]["result"]["ok"]
    assert "yield" in first["tool_calls"][0]["result"]["results"][0]["text"]
    assert first["answer"] == "still searching"  # the unexecuted call is not part of the answer
    assert (
        TRRuntime(None, index, cfg=CFG, use_retrieval=False, generate_fn=ScriptedModel("x")).answer("q")[
            "passages"
        ]
        == []
    )


def test_runtime_with_the_tiny_model_returns_an_answer_and_passages(tiny_model_dir, index):
    runtime = TRRuntime(tiny_model_dir, index, cfg=CFG, max_new_tokens=8)
    outs = runtime.answer_batch(["What is a tuple?", "How does the with statement work?"])
    for out in outs:
        assert isinstance(out["answer"], str)
        assert out["passages"] and all({"chunk_id", "text", "score"} <= set(p) for p in out["passages"])
        assert out["messages"][1]["content"].startswith("Context:")
    assert outs[0]["passages"][0]["text"].startswith("A tuple is an immutable sequence")
