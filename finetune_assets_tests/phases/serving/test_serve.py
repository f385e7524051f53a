"""`finetune-assets serve` as a real subprocess on 127.0.0.1 (the shared ``served_model`` of llm_server.py):
health, model list, chat completions in OpenAI's schema, JSON errors, concurrent requests."""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from finetune_assets import cli
from finetune_assets_tests.phases.llm_server import babbling_model, request_json, served_model  # noqa: F401

QUESTION = [{"role": "user", "content": "What is a list?"}]


def _root(served) -> str:
    return served.base_url.removesuffix("/v1")


def test_health_and_models(served_model):  # noqa: F811
    assert request_json(_root(served_model) + "/health") == (
        200,
        {"status": "ok", "model": "tiny", "variants": {"tiny": 1.0}},
    )
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
        ({"messages": QUESTION, "stream": "yes"}, "stream"),
        ({"messages": QUESTION, "temperature": 2.5}, "temperature"),  # out of range
        ({"messages": QUESTION, "temperature": -0.1}, "temperature"),
        ({"messages": QUESTION, "max_tokens": -5}, "max_tokens"),  # negative lengths
        (
            {"messages": QUESTION, "max_completion_tokens": 100000},
            "max_completion_tokens",
        ),  # over the context
        ({"messages": QUESTION, "max_tokens": "ten"}, "max_tokens"),
        ({"messages": QUESTION, "tools": [{"type": "function"}]}, "tools[0]"),
        ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{}]}]}, "messages[0].tool_calls"),
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
    status, reply = request_json(url, method="DELETE")  # a known route, an unknown method
    assert status == 405 and reply["error"]["code"] == "method_not_allowed"
    # the server is still healthy after all that
    assert request_json(url, {"messages": QUESTION, "max_tokens": 2})[0] == 200


def test_serve_refuses_a_folder_without_a_model(tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path), "--port", "0"]) == 1
    assert "is not a Hugging Face model folder" in capsys.readouterr().err


def test_a_prompt_over_the_context_is_refused_with_its_size_never_cut(served_model):  # noqa: F811
    url = served_model.base_url + "/chat/completions"
    long = [{"role": "user", "content": "list tuple set dict " * 200}]  # the tiny model's context is 512
    status, reply = request_json(url, {"messages": long, "max_tokens": 8})
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert reply["error"]["param"] == "messages" and "512" in reply["error"]["message"]
    # a prompt that fits with a smaller budget but not with this one names max_tokens' part too
    status, reply = request_json(url, {"messages": QUESTION, "max_tokens": 511})
    assert status == 400 and "max_tokens" in reply["error"]["message"]


def test_an_oversized_body_gets_413_and_the_server_stays_up(served_model):  # noqa: F811
    url = served_model.base_url + "/chat/completions"
    huge = {"messages": [{"role": "user", "content": "x" * (2 << 20)}]}  # 2 MiB: over the 1 MiB default
    status, reply = request_json(url, huge)
    assert status == 413 and reply["error"]["code"] == "request_too_large"
    assert request_json(url, {"messages": QUESTION, "max_tokens": 2})[0] == 200


def test_usage_counts_the_generated_tokens_and_length_means_the_budget_ran_out(served_model):  # noqa: F811
    url = served_model.base_url + "/chat/completions"
    short = request_json(url, {"messages": QUESTION, "max_tokens": 3})[1]
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == "length"
    longer = request_json(url, {"messages": QUESTION, "max_tokens": 12})[1]
    assert longer["usage"]["prompt_tokens"] == short["usage"]["prompt_tokens"]
    assert longer["usage"]["completion_tokens"] <= 12
    assert longer["choices"][0]["message"]["content"].startswith(short["choices"][0]["message"]["content"])


def sse_events(url: str, body: dict, headers: dict | None = None) -> list:
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json",
                                                                              **(headers or {})})  # fmt: skip
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode().strip() for line in resp]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return [p if p == "[DONE]" else json.loads(p) for p in payloads]


def test_streaming_sends_the_same_answer_as_deltas_then_usage_and_done(served_model):  # noqa: F811
    url = served_model.base_url + "/chat/completions"
    body = {"messages": QUESTION, "max_tokens": 10}
    whole = request_json(url, body)[1]
    events = sse_events(url, {**body, "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert (
        len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 1
    )  # incremental
    assert text.strip() == whole["choices"][0]["message"]["content"]
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == [whole["choices"][0]["finish_reason"]]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]


def test_a_request_with_tools_gets_the_tool_listing_in_its_prompt(served_model):  # noqa: F811
    from finetune_assets.phases.inference import tools

    url = served_model.base_url + "/chat/completions"
    plain = request_json(url, {"messages": QUESTION, "max_tokens": 2})[1]
    with_tools = request_json(url, {"messages": QUESTION, "max_tokens": 2, "tools": tools.tool_specs()})[1]
    assert with_tools["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"] + 20


@pytest.fixture(scope="module")
def keyed_server(babbling_model):  # noqa: F811
    """An in-process server with an API key, a one-second body timeout and no waiting room."""
    from finetune_assets.phases.serving import serve

    limits = serve.Limits(body_timeout_s=1.0, max_queue=0)
    server = serve.make_server(babbling_model, port=0, model_name="tiny", limits=limits,
                               api_keys={"k-test"}).start()  # fmt: skip
    yield server
    server.stop()


def test_api_keys_guard_the_v1_routes_and_beyond_loopback_are_required(keyed_server, babbling_model):  # noqa: F811
    from finetune_assets.phases.serving import serve

    root = keyed_server.url.removesuffix("/v1")
    status, reply = request_json(keyed_server.url + "/models")
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    assert request_json(keyed_server.url + "/models", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request_json(keyed_server.url + "/models", headers={"Authorization": "Bearer k-test"})[0] == 200
    assert request_json(root + "/health")[0] == 200  # health stays open for probes
    with pytest.raises(ValueError, match="FINETUNE_ASSETS_API_KEYS"):
        serve.make_server(babbling_model, host="0.0.0.0", port=0, api_keys=set())


def test_a_slow_client_gets_408_instead_of_holding_the_server(keyed_server):
    import socket
    import urllib.parse

    where = urllib.parse.urlparse(keyed_server.url)
    with socket.create_connection((where.hostname, where.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k-test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"messages\"")  # fmt: skip
        answer = b""  # nothing more is sent: the body never completes
        while b"request_timeout" not in answer and (part := sock.recv(65536)):
            answer += part
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer


def test_beyond_the_queue_a_request_gets_429_with_retry_after(keyed_server):
    import threading

    url, auth = keyed_server.url + "/chat/completions", {"Authorization": "Bearer k-test"}
    admission = keyed_server.uvicorn_server.config.app.state.admission
    first = threading.Thread(target=request_json, args=(url, {"messages": QUESTION, "max_tokens": 400}),
                             kwargs={"headers": auth})  # fmt: skip
    first.start()
    deadline = time.monotonic() + 30
    while admission.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    status, reply, headers = request_with_headers(url, auth, {"messages": QUESTION, "max_tokens": 2})
    first.join(60)
    assert status == 429 and reply["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["Retry-After"]) >= 1
    assert (
        request_json(url, {"messages": QUESTION, "max_tokens": 2}, headers=auth)[0] == 200
    )  # slot free again


def request_with_headers(url: str, headers: dict, body: dict):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **headers})  # fmt: skip
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def test_metrics_count_latency_tokens_and_errors_by_variant(served_model):  # noqa: F811
    import urllib.request

    url = served_model.base_url + "/chat/completions"
    request_json(url, {"messages": QUESTION, "max_tokens": 2})
    request_json(url, {"messages": QUESTION, "max_tokens": -1})
    root = served_model.base_url.removesuffix("/v1")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        root + "/metrics", timeout=30
    ) as resp:
        text = resp.read().decode()
    assert (
        'finetune_assets_request_seconds_bucket{le="0.05",route="/v1/chat/completions",status="200",variant="tiny"}'
        in text
    )
    assert 'finetune_assets_tokens_total{kind="completion",variant="tiny"}' in text
    assert 'finetune_assets_errors_total{status="400",variant="tiny"}' in text


def test_a_registered_variant_is_served_by_alias_or_version(babbling_model, tmp_path, monkeypatch):  # noqa: F811
    from mlflow import MlflowClient

    from finetune_assets.phases.serving import serve
    from finetune_assets.tracking import REGISTERED_MODEL

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("FINETUNE_ASSETS_HOME", str(tmp_path / "home"))
    client = MlflowClient(uri)
    client.create_registered_model(REGISTERED_MODEL)
    in_place = client.create_model_version(REGISTERED_MODEL, source=babbling_model.resolve().as_uri())
    run = client.create_run(client.create_experiment("serve", artifact_location=(tmp_path / "art").as_uri()))
    client.log_artifacts(run.info.run_id, str(babbling_model), "model")
    uploaded = client.create_model_version(REGISTERED_MODEL, source=f"runs:/{run.info.run_id}/model",
                                           run_id=run.info.run_id)  # fmt: skip
    client.set_registered_model_alias(REGISTERED_MODEL, "champion", uploaded.version)

    server = serve.make_server(f"models:/{REGISTERED_MODEL}@champion", port=0).start()
    try:
        status, models = request_json(server.url + "/models")
        assert status == 200 and models["data"][0]["id"] == f"{REGISTERED_MODEL}@champion"
        body = {"messages": QUESTION, "max_tokens": 4, "model": f"{REGISTERED_MODEL}@champion"}
        from_alias = request_json(server.url + "/chat/completions", body)[1]["choices"][0]["message"][
            "content"
        ]
    finally:
        server.stop()
    assert (
        tmp_path / "home" / "served-models" / f"{REGISTERED_MODEL}-v{uploaded.version}"
    ).is_dir()  # downloaded
    assert (
        serve.registered_folder(f"models:/{REGISTERED_MODEL}/{in_place.version}") == babbling_model.resolve()
    )
    server = serve.make_server(
        f"models:/{REGISTERED_MODEL}/{in_place.version}", port=0, model_name="v1"
    ).start()
    try:
        body = {"messages": QUESTION, "max_tokens": 4}
        from_version = request_json(server.url + "/chat/completions", body)[1]["choices"][0]["message"][
            "content"
        ]
    finally:
        server.stop()
    assert from_version == from_alias  # the same weights either way


@pytest.fixture(scope="module")
def ab_server(babbling_model, tmp_path_factory):  # noqa: F811
    """Champion and challenger (the same weights under two names) split 50/50, with a request log."""
    from finetune_assets.phases.serving import serve

    log_url = f"sqlite:///{tmp_path_factory.mktemp('ab') / 'requests.sqlite'}"
    server = serve.make_server(babbling_model, port=0, model_name="champion", weights=[0.5, 0.5],
                               challengers=[f"challenger={babbling_model}"], request_log=log_url).start()  # fmt: skip
    yield server, log_url
    server.stop()


def test_the_router_splits_users_stickily_and_logs_every_routed_request(ab_server):
    from finetune_assets.phases.serving.request_log import RequestLog

    server, log_url = ab_server
    url = server.url + "/chat/completions"
    assert [m["id"] for m in request_json(server.url + "/models")[1]["data"]] == ["champion", "challenger"]
    served = {}
    for i in range(24):
        status, reply = request_json(url, {"messages": QUESTION, "max_tokens": 2, "user": f"user-{i}"})
        assert status == 200, reply
        served[f"user-{i}"] = (reply["model"], reply["id"])
    assert {model for model, _ in served.values()} == {"champion", "challenger"}
    again = request_json(url, {"messages": QUESTION, "max_tokens": 2}, headers={"X-User-Id": "user-3"})[1]
    assert again["model"] == served["user-3"][0]  # sticky, whether the id comes in the body or a header
    named = request_json(
        url, {"messages": QUESTION, "max_tokens": 2, "model": "challenger", "user": "user-0"}
    )[1]
    assert named["model"] == "challenger"  # a client naming a variant gets it
    refused = request_json(url, {"messages": QUESTION, "max_tokens": -3, "user": "refused-user"})
    assert refused[0] == 400
    logged = RequestLog(log_url).responses_by_id({rid for _, rid in served.values()})
    assert len(logged) == 24
    row = logged[served["user-1"][1]]
    assert row["variant"] == served["user-1"][0] and row["user_id"] == "user-1" and row["routed"]
    assert row["messages"] == QUESTION and row["status"] == 200 and row["completion_tokens"] >= 1
    assert row["answer"] and row["latency_s"] > 0 and row["prompt_tokens"] > 3
    rows = RequestLog(log_url).responses_of()
    assert [r["status"] for r in rows if r["user_id"] == "refused-user"] == [
        400
    ]  # refused requests are logged too
    assert not next(r for r in rows if r["id"] == named["id"])["routed"]


def test_feedback_rates_a_logged_answer_and_refuses_bad_ratings(ab_server):
    from finetune_assets.phases.serving.request_log import RequestLog

    server, log_url = ab_server
    reply = request_json(
        server.url + "/chat/completions", {"messages": QUESTION, "max_tokens": 2, "user": "fb"}
    )[1]
    feedback = server.url + "/feedback"
    status, ack = request_json(feedback, {"response_id": reply["id"], "rating": "down",
                                          "preferred": "A list is a mutable sequence."})  # fmt: skip
    assert status == 200 and ack["object"] == "feedback" and ack["variant"] == reply["model"], ack
    assert ack["label"] is False and ack["preferred"] is True
    assert request_json(feedback, {"response_id": reply["id"], "rating": True})[0] == 200
    for body, status, param in [
        ({"response_id": "chatcmpl-nope", "rating": "up"}, 404, "response_id"),
        ({"rating": "up"}, 400, "response_id"),
        ({"response_id": reply["id"], "rating": "meh"}, 400, "rating"),
        ({"response_id": reply["id"]}, 400, "rating"),
        ({"response_id": reply["id"], "preferred": "   "}, 400, "preferred"),
        ([1, 2], 400, None),
    ]:
        got, err = request_json(feedback, body)
        assert (got, err["error"]["param"]) == (status, param), (body, err)
    rated = [f for f in RequestLog(log_url).feedback_of() if f["response_id"] == reply["id"]]
    assert [(f["label"], f["preferred"]) for f in rated] == [
        (False, "A list is a mutable sequence."),
        (True, None),
    ]


def test_without_a_request_log_feedback_is_not_found(keyed_server):
    status, reply = request_json(keyed_server.url + "/feedback", {"response_id": "x", "rating": "up"},
                                 headers={"Authorization": "Bearer k-test"})  # fmt: skip
    assert status == 404 and "request log" in reply["error"]["message"]
