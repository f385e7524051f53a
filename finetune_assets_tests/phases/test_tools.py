"""The python_eval sandbox, the tool-call protocol and the T&R runtime (T&R training data: test_tr_data)."""

import time

import pytest

from finetune_assets.phases.tools import (
    TRRuntime,
    build_prompt,
    check_expression,
    format_tool_call,
    parse_tool_call,
    python_eval,
    run_tool,
    system_prompt,
    tool_specs,
)
from finetune_assets_tests.phases.tr_fixtures import CFG, ScriptedModel

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
    assert "search_docs(query, k)" in prompt and "python_eval(expression)" in prompt
    assert "<tool_call>" in prompt


def test_run_tool_executes_both_tools_and_reports_bad_calls(index):
    found = run_tool({"name": "search_docs", "arguments": {"query": "immutable tuple", "k": 1}}, index, CFG)
    assert found["ok"] and len(found["results"]) == 1 and "tuple" in found["results"][0]["text"].lower()
    assert (
        run_tool({"name": "python_eval", "arguments": {"expression": "abs(-3)"}}, index, CFG)["result"] == "3"
    )
    assert "unknown tool" in run_tool({"name": "rm", "arguments": {}}, index, CFG)["error"]
    assert "bad arguments" in run_tool({"name": "search_docs", "arguments": {}}, index, CFG)["error"]


# --- runtime ------------------------------------------------------------------------------------------------


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
