"""phases.inference.tools: the tool-call protocol and the T&R runtime (T&R training data: test_tr_data)."""

from finetune_assets.phases.inference.tools import (
    TRRuntime,
    build_prompt,
    format_tool_call,
    parse_tool_call,
    run_tool,
    system_prompt,
    tool_specs,
)
from finetune_assets_tests.phases.tr_fixtures import CFG, ScriptedModel


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
