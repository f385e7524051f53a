"""`finetune-assets serve` as a real subprocess on 127.0.0.1 (the shared ``served_model`` of llm_server.py):
health, model list, chat completions in OpenAI's schema, JSON errors, concurrent requests."""

from concurrent.futures import ThreadPoolExecutor

from finetune_assets import cli
from finetune_assets_tests.phases.llm_server import request_json, served_model  # noqa: F401

QUESTION = [{"role": "user", "content": "What is a list?"}]


def _root(served) -> str:
    return served.base_url.removesuffix("/v1")


def test_health_and_models(served_model):  # noqa: F811
    assert request_json(_root(served_model) + "/health") == (200, {"status": "ok", "model": "tiny"})
    status, models = request_json(served_model.base_url + "/models")
    assert status == 200 and models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny"] and models["data"][0]["object"] == "model"


def test_chat_completion_schema_and_determinism(served_model):  # noqa: F811
    body = {"model": "tiny", "messages": QUESTION, "temperature": 0, "max_tokens": 6, "seed": 1, "n": 1}
    status, reply = request_json(served_model.base_url + "/chat/completions", body)
    assert status == 200, reply
    assert reply["id"].startswith("chatcmpl-") and reply["object"] == "chat.completion"
    assert isinstance(reply["created"], int) and reply["model"] == "tiny"
    [choice] = reply["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str) and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length")
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 3 and usage["completion_tokens"] >= 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # greedy decoding: the same request gets the same answer; another prompt gets another one
    again = request_json(served_model.base_url + "/chat/completions", body)[1]
    assert again["choices"][0]["message"]["content"] == choice["message"]["content"]
    assert again["id"] != reply["id"]
    other = {**body, "messages": [{"role": "user", "content": "Tell me about decorators and generators."}]}
    other_reply = request_json(served_model.base_url + "/chat/completions", other)[1]
    assert other_reply["choices"][0]["message"]["content"] != choice["message"]["content"]


def test_concurrent_requests_match_sequential_ones(served_model):  # noqa: F811
    """Requests arrive on threads; generation is serialized, so each answer belongs to its own prompt."""
    questions = ["What is a set?", "What is a tuple?", "Explain the with statement.", "What does len do?"]
    bodies = [{"messages": [{"role": "user", "content": q}], "max_tokens": 5} for q in questions]
    url = served_model.base_url + "/chat/completions"
    sequential = [request_json(url, b)[1]["choices"][0]["message"]["content"] for b in bodies]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda b: request_json(url, b), bodies))
    assert [status for status, _ in parallel] == [200] * 4
    assert [r["choices"][0]["message"]["content"] for _, r in parallel] == sequential


def test_bad_requests_get_json_errors_naming_the_field(served_model):  # noqa: F811
    url = served_model.base_url + "/chat/completions"
    cases = [
        ({"model": "tiny"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "seed": 1.5}, "seed"),
        ({"messages": QUESTION, "n": 2}, "n"),
        ({"messages": QUESTION, "stream": True}, "stream"),
    ]
    for body, field in cases:
        status, reply = request_json(url, body)
        assert status == 400, (body, reply)
        assert reply["error"]["param"] == field and reply["error"]["type"] == "invalid_request_error"
        assert field.split("[")[0] in reply["error"]["message"]
    status, reply = request_json(url, b"{not json")
    assert status == 400 and "not valid JSON" in reply["error"]["message"]
    status, reply = request_json(url, {"model": "gpt-9", "messages": QUESTION})
    assert (
        status == 404 and reply["error"]["code"] == "model_not_found" and "gpt-9" in reply["error"]["message"]
    )
    assert request_json(_root(served_model) + "/v2/nothing")[0] == 404
    status, reply = request_json(served_model.base_url + "/completions", {"prompt": "hi"})
    assert status == 404 and "/v1/completions" in reply["error"]["message"]
    # the server is still healthy after all that
    assert request_json(url, {"messages": QUESTION, "max_tokens": 2})[0] == 200


def test_serve_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path), "--port", "0"]) == 1
    assert "is not a Hugging Face model folder" in capsys.readouterr().err
