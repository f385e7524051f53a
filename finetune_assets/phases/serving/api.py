"""The HTTP layer of ``finetune-assets serve`` (FastAPI): routes, limits, API keys, streaming, metrics. What a
request means and how it is decoded is serve.ChatModel's; this module only moves bytes and counts them."""

import asyncio
import contextlib
import json
import math
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from finetune_assets.phases.serving.chat import (
    ChatModel,
    Limits,
    Prepared,
    RequestError,
    assistant_message,
    usage,
)

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 120)


def error_response(err: RequestError, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if err.status < 500 else "server_error"
    payload = {"error": {"message": str(err), "type": kind, "param": err.param, "code": err.code}}
    return JSONResponse(payload, status_code=err.status, headers=headers)


class Metrics:
    """Prometheus series, in a registry of their own (one per app: tests build several)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.latency = Histogram("finetune_assets_request_seconds", "request latency", ["variant", "route", "status"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)  # fmt: skip
        self.tokens = Counter("finetune_assets_tokens", "tokens", ["variant", "kind"], registry=self.registry)
        self.errors = Counter("finetune_assets_errors", "error answers", ["variant", "status"],
                              registry=self.registry)  # fmt: skip

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class Admission:
    """One generation at a time, at most ``max_queue`` waiting: the rest get 429 with a Retry-After."""

    def __init__(self, max_queue: int):
        self.max_queue, self.in_flight, self.mean_s = max_queue, 0, 1.0

    def enter(self) -> None:
        if self.in_flight > self.max_queue:  # one generating + max_queue waiting
            wait = max(1, math.ceil(self.mean_s * self.in_flight))
            raise RequestError(f"the server is busy ({self.in_flight} requests ahead); retry in {wait} s",
                               status=429, code="rate_limit_exceeded", param=str(wait))  # fmt: skip
        self.in_flight += 1

    def leave(self, seconds: float) -> None:
        self.in_flight -= 1
        self.mean_s = 0.8 * self.mean_s + 0.2 * seconds


def create_app(
    chat_model: ChatModel, limits: Limits = Limits(), api_keys: frozenset[str] = frozenset()
) -> FastAPI:
    app = FastAPI(title="finetune-assets serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics, admission, variant = Metrics(), Admission(limits.max_queue), chat_model.name
    app.state.admission = admission  # for tests and introspection: requests generating or waiting

    @app.middleware("http")
    async def keys_and_metrics(request: Request, call_next):
        started = time.monotonic()
        route = request.url.path
        if api_keys and route.startswith("/v1"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given not in api_keys:
                response = error_response(RequestError("a valid API key is required: Authorization: Bearer <key>",
                                                       status=401, code="invalid_api_key"))  # fmt: skip
                metrics.errors.labels(variant, "401").inc()
                return response
        response = await call_next(request)
        if route.startswith("/v1"):
            metrics.latency.labels(variant, route, str(response.status_code)).observe(
                time.monotonic() - started
            )
            if response.status_code >= 400:
                metrics.errors.labels(variant, str(response.status_code)).inc()
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # unknown routes and methods, OpenAI-shaped
        what = "path" if exc.status_code == 404 else "method"
        message = f"unknown {what}: {request.method} {request.url.path}"
        return error_response(RequestError(message, status=exc.status_code, code="not_found" if exc.status_code == 404
                                           else "method_not_allowed"))  # fmt: skip

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        headers = {"Retry-After": exc.param} if exc.status == 429 else None
        if exc.status == 429:
            exc.param = None
        return error_response(exc, headers)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": variant}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return chat_model.models()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request, limits)
        prepared = await asyncio.to_thread(chat_model.prepare, body, limits)  # tokenizing off the event loop
        admission.enter()
        started = time.monotonic()
        if prepared.stream:
            loop, queue = asyncio.get_running_loop(), asyncio.Queue()

            def on_token(ids):
                loop.call_soon_threadsafe(queue.put_nowait, ids)

            # the slot is held by the generation itself, whether or not the client stays to read it
            task = asyncio.ensure_future(asyncio.to_thread(chat_model.generate, prepared, on_token))
            task.add_done_callback(
                lambda _: (queue.put_nowait(None), admission.leave(time.monotonic() - started))
            )
            return StreamingResponse(stream(prepared, started, queue, task), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})  # fmt: skip
        try:
            ids, finish = await asyncio.to_thread(chat_model.generate, prepared)
        finally:
            admission.leave(time.monotonic() - started)
        count_tokens(prepared, ids)
        return chat_model.completion(prepared, ids, finish)

    def count_tokens(prepared: Prepared, ids: list[int]) -> None:
        metrics.tokens.labels(variant, "prompt").inc(len(prepared.prompt_ids))
        metrics.tokens.labels(variant, "completion").inc(len(ids))

    async def stream(prepared: Prepared, started: float, queue: asyncio.Queue, task: asyncio.Future):
        """Server-sent chunks: the role, text deltas as tokens arrive, the finish reason, usage, [DONE]."""
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": variant}  # fmt: skip

        def chunk(delta: dict, finish=None) -> str:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return f"data: {json.dumps({**meta, 'choices': [choice]})}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        sent = ""
        # with tools the reply may be a call: it is parsed whole, so text is held back until the end
        while (ids := await queue.get()) is not None:
            text = chat_model.text(ids).lstrip()
            if not prepared.with_tools and not text.endswith("\ufffd") and len(text) > len(sent):
                yield chunk({"content": text[len(sent) :]})
                sent = text
        ids, finish = await task
        message, finish = assistant_message(chat_model.text(ids).strip(), finish, prepared.with_tools)
        if message.get("tool_calls"):
            yield chunk({"tool_calls": [{"index": 0, **message["tool_calls"][0]}]})
        elif rest := chat_model.text(ids).lstrip()[len(sent) :]:
            yield chunk({"content": rest})
        yield chunk({}, finish)
        if prepared.include_usage:
            yield f"data: {json.dumps({**meta, 'choices': [], 'usage': usage(prepared, ids)})}\n\n"
        yield "data: [DONE]\n\n"
        count_tokens(prepared, ids)

    return app


DRAIN_FACTOR = 16  # an oversized body up to this many times the limit is read (and dropped) before the 413


async def _drain(request: Request) -> None:
    async for _ in request.stream():
        pass


async def read_json(request: Request, limits: Limits):
    """The body as JSON: 413 beyond ``max_body_bytes``, 408 when it does not arrive in ``body_timeout_s``."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
        if declared.isdigit() and int(declared) <= DRAIN_FACTOR * limits.max_body_bytes:
            # read and drop it first: a client still sending when the answer comes gets a broken pipe, not a 413
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_drain(request), limits.body_timeout_s)
        raise RequestError(f"the request body is over {limits.max_body_bytes} bytes (or its length is bad)",
                           status=413, code="request_too_large")  # fmt: skip

    async def receive() -> bytes:
        raw = bytearray()
        async for part in request.stream():
            raw += part
            if len(raw) > limits.max_body_bytes:
                raise RequestError(f"the request body is over {limits.max_body_bytes} bytes", status=413,
                                   code="request_too_large")  # fmt: skip
        return bytes(raw)

    try:
        raw = await asyncio.wait_for(receive(), limits.body_timeout_s)
    except TimeoutError:
        raise RequestError(f"the request body did not arrive within {limits.body_timeout_s:g} s", status=408,
                           code="request_timeout") from None  # fmt: skip
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}") from None
