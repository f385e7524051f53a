"""phases.serving.chat without a server: how a request's tools and tool calls become the prompt training wrote,
and how a reply's call comes back in OpenAI's shape."""

import json

QUESTION = [{"role": "user", "content": "What is a list?"}]


def test_tools_reach_the_model_as_training_renders_them_and_a_call_comes_back_as_tool_calls():
    from finetune_assets.phases.inference import tools
    from finetune_assets.phases.serving import chat

    request_tools = chat.parse_tools(tools.tool_specs())
    messages = chat.parse_messages(
        [{"role": "user", "content": "What is 2**10?"},
         {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
             "name": "python_eval", "arguments": json.dumps({"expression": "2**10"})}}]},
         {"role": "tool", "tool_call_id": "c1", "content": '{"ok": true, "result": "1024"}'}],
        request_tools,
    )  # fmt: skip
    # the T&R system prompt and call text exactly as training wrote them (phases.inference.tools)
    assert messages[0] == {"role": "system", "content": tools.system_prompt()}
    assert messages[2]["content"] == tools.format_tool_call("python_eval", {"expression": "2**10"})
    custom = chat.parse_messages([{"role": "system", "content": "Be brief."}, *QUESTION], request_tools)
    assert custom[0]["content"] == tools.system_prompt(intro="Be brief.")

    reply = tools.format_tool_call("search_docs", {"query": "itertools"})
    message, finish = chat.assistant_message(reply, "stop", with_tools=True)
    assert finish == "tool_calls" and message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "search_docs"
    assert json.loads(call["function"]["arguments"]) == {"query": "itertools"}
    assert chat.assistant_message(reply, "stop", with_tools=False) == ({"role": "assistant", "content": reply},
                                                                        "stop")  # fmt: skip
