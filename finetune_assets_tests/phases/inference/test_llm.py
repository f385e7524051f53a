"""Chat clients: OpenAIChatClient against the real served tiny model (llm_server.py) and against small stdlib
stub servers scripted per test (retries, 401, 400, timeouts, concurrency); HFChatClient on the tiny model."""

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from finetune_assets.config import LLMEndpointConfig
from finetune_assets.phases.inference.llm import HFChatClient, LLMEndpointError, OpenAIChatClient, make_client
from finetune_assets.phases.serving import serve
from finetune_assets_tests.phases.llm_server import babbling_model, served_model  # noqa: F401

CONVERSATIONS = [
    [{"role": "user", "content": "What is a list?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a tuple?"}],
    [{"role": "user", "content": "Explain decorators."}],
]


def _cfg(base_url: str | None, **overrides) -> LLMEndpointConfig:
    values = dict(base_url=base_url, model="tiny", api_key_env=None, temperature=0.0, max_tokens=6)
    return LLMEndpointConfig(**{**values, **overrides})


def _completion(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}


@contextmanager
def stub_server(respond):
    """A 127.0.0.1 server whose POSTs are answered by ``respond(n, body, headers) -> (status, payload,
    headers)`` (n counts requests from 0; payload None sends nothing until the test ends). Yields (base_url,
    state) where state["inflight_max"] is the most requests handled at once."""
    state = {"count": 0, "inflight": 0, "inflight_max": 0, "headers": []}
    lock, release = threading.Lock(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                n = state["count"]
                state["count"] += 1
                state["inflight"] += 1
                state["inflight_max"] = max(state["inflight_max"], state["inflight"])
                state["headers"].append(
                    {k.lower(): v for k, v in self.headers.items()}
                )  # names are case-free
            try:
                status, payload, headers = respond(n, body, self.headers)
                if payload is None:
                    release.wait(10)  # never answers (within the client's timeout)
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(data))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)
            finally:
                with lock:
                    state["inflight"] -= 1

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


# ---------------------------------------------------------------------------------------- the real server


def test_answers_for_a_batch_from_the_served_model(served_model, tmp_path):  # noqa: F811
    client = OpenAIChatClient(_cfg(served_model.base_url, concurrency=2), tmp_path / "cache")
    answers = client.complete(CONVERSATIONS + [CONVERSATIONS[0]])  # a repeated prompt is asked once
    assert len(answers) == 4 and answers[3] == answers[0]
    assert all(isinstance(a, str) and a for a in answers)
    assert len(set(answers[:3])) == 3  # each prompt its own (deterministic) babble
    assert client.stats() == {"requests": 3, "cache_hits": 0, "failures": 0, "retries": 0}
    assert len(list((tmp_path / "cache").rglob("*.json"))) == 3


def test_wrong_model_name_is_a_configuration_error(served_model):  # noqa: F811
    client = OpenAIChatClient(_cfg(served_model.base_url, model="gpt-9", max_retries=3))
    with pytest.raises(LLMEndpointError, match=r"/v1/chat/completions answered HTTP 404 .*gpt-9"):
        client.complete(CONVERSATIONS)
    assert client.retries == 0


def test_cache_replays_answers_with_the_server_stopped(babbling_model, tmp_path):  # noqa: F811
    """An in-process server we can stop: the second client answers from the cache alone."""
    server = serve.make_server(babbling_model, port=0, model_name="tiny").start()
    try:
        first = OpenAIChatClient(_cfg(server.url), tmp_path / "cache")
        answers = first.complete(CONVERSATIONS)
        assert first.requests == 3 and all(answers)
    finally:
        server.stop()
    second = OpenAIChatClient(_cfg(server.url), tmp_path / "cache")
    assert second.complete(CONVERSATIONS) == answers
    assert second.stats() == {"requests": 0, "cache_hits": 3, "failures": 0, "retries": 0}
    # another sampling setting is another cache key: it must ask, and the stopped server cannot answer
    uncached = OpenAIChatClient(_cfg(server.url, max_tokens=7, max_retries=1), tmp_path / "cache")
    assert uncached.complete(CONVERSATIONS[:1]) == [None]
    assert uncached.stats() == {"requests": 2, "cache_hits": 0, "failures": 1, "retries": 1}


# ----------------------------------------------------------------------------------------- stub servers


def test_retries_503_then_succeeds():
    def respond(n, body, headers):
        if n < 2:
            return 503, {"error": {"message": "overloaded"}}, {"Retry-After": "0"}
        return 200, _completion(f"answer to {body['messages'][-1]['content']}"), {}

    with stub_server(respond) as (url, state):
        client = OpenAIChatClient(_cfg(url, max_retries=3))
        assert client.complete(CONVERSATIONS[:1]) == ["answer to What is a list?"]
    assert client.retries == 2 and client.requests == 3 and client.failures == 0
    assert state["count"] == 3


def test_429_retries_are_spent_then_none():
    def respond(n, body, headers):
        return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0.01"}

    with stub_server(respond) as (url, state):
        client = OpenAIChatClient(_cfg(url, max_retries=2))
        assert client.complete(CONVERSATIONS[:1]) == [None]
    assert client.stats() == {"requests": 3, "cache_hits": 0, "failures": 1, "retries": 2}


def test_401_raises_a_clear_error_and_the_key_is_sent_but_never_shown(monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-test-secret")

    def respond(n, body, headers):
        return 401, {"error": {"message": "Incorrect API key provided"}}, {}

    with stub_server(respond) as (url, state):
        client = OpenAIChatClient(_cfg(url, api_key_env="TEST_LLM_KEY", max_retries=3))
        with pytest.raises(LLMEndpointError) as err:
            client.complete(CONVERSATIONS[:1])
    message = str(err.value)
    assert (
        url in message and "401" in message and "Incorrect API key" in message and "TEST_LLM_KEY" in message
    )
    assert "sk-test-secret" not in message
    assert state["headers"][0]["authorization"] == "Bearer sk-test-secret"
    assert state["count"] == 1 and client.retries == 0


def test_other_4xx_fails_that_prompt_without_retry():
    def respond(n, body, headers):
        if "long" in body["messages"][-1]["content"]:
            return 400, {"error": {"message": "context length exceeded"}}, {}
        return 200, _completion("ok"), {}

    with stub_server(respond) as (url, state):
        client = OpenAIChatClient(_cfg(url, max_retries=3, concurrency=1))
        prompts = [[{"role": "user", "content": "a long one"}], [{"role": "user", "content": "short"}]]
        assert client.complete(prompts) == [None, "ok"]
    assert client.stats() == {"requests": 2, "cache_hits": 0, "failures": 1, "retries": 0}
    assert "authorization" not in state["headers"][0]  # no key configured: none sent


def test_a_server_that_never_answers_times_out_into_a_failure():
    with stub_server(lambda n, body, headers: (200, None, {})) as (url, state):
        client = OpenAIChatClient(_cfg(url, timeout_s=0.3, max_retries=1))
        started = time.monotonic()
        assert client.complete(CONVERSATIONS[:1]) == [None]
        assert time.monotonic() - started < 3
    assert client.stats() == {"requests": 2, "cache_hits": 0, "failures": 1, "retries": 1}


def test_concurrency_limit_is_respected():
    def respond(n, body, headers):
        time.sleep(0.15)
        return 200, _completion(body["messages"][-1]["content"].upper()), {}

    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    with stub_server(respond) as (url, state):
        client = OpenAIChatClient(_cfg(url, concurrency=2))
        assert client.complete(prompts) == [f"QUESTION {i}" for i in range(6)]  # in input order
    assert state["count"] == 6 and state["inflight_max"] == 2


def test_unreadable_cache_entries_are_asked_again(tmp_path):
    with stub_server(lambda n, body, headers: (200, _completion(f"v{n}"), {})) as (url, state):
        client = OpenAIChatClient(_cfg(url), tmp_path)
        assert client.complete(CONVERSATIONS[:1]) == ["v0"]
        [entry] = list(tmp_path.rglob("*.json"))
        entry.write_text("{truncated")
        assert client.complete(CONVERSATIONS[:1]) == ["v1"]
        assert client.complete(CONVERSATIONS[:1]) == ["v1"] and client.cache_hits == 1
        assert json.loads(entry.read_text())["content"] == "v1"
        # caching off: every call asks
        off = OpenAIChatClient(_cfg(url, cache=False), tmp_path)
        assert off.complete(CONVERSATIONS[:1]) == ["v2"] and off.cache_hits == 0


# --------------------------------------------------------------------------------------------- HF backend


def test_hf_client_generates_and_caches(babbling_model, tmp_path):  # noqa: F811
    cfg = LLMEndpointConfig(
        backend="hf", model=str(babbling_model), temperature=0.0, max_tokens=5, concurrency=2
    )
    client = make_client(cfg, tmp_path)
    assert isinstance(client, HFChatClient)
    answers = client.complete(CONVERSATIONS)
    assert len(answers) == 3 and all(isinstance(a, str) and a for a in answers) and len(set(answers)) == 3
    assert client.requests == 3
    again = make_client(cfg, tmp_path)
    assert again.complete(CONVERSATIONS) == answers
    assert again.stats() == {"requests": 0, "cache_hits": 3, "failures": 0, "retries": 0}
    assert again._loaded is None  # answered from the cache without loading the model


def test_make_client_and_config_errors(tmp_path):
    assert isinstance(make_client(_cfg("http://127.0.0.1:1/v1")), OpenAIChatClient)
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        make_client(LLMEndpointConfig(backend="hf", model=str(tmp_path)))
