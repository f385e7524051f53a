"""The HTTP layer of ``finetune-assets serve`` (FastAPI): routes, limits, API keys, streaming, metrics, the A/B
router's choice of variant, the request log and feedback. What a request means and how it is decoded is
chat.ChatModel's; this module moves bytes, counts them and writes them down."""

import asyncio
import contextlib
import functools
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
from finetune_assets.phases.serving.request_log import RequestLog
from finetune_assets.phases.serving.router import Router

MAX_USER_CHARS = 256
MAX_FEEDBACK_CHARS = 32_000

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
    models: ChatModel | list[ChatModel],
    limits: Limits = Limits(),
    api_keys: frozenset[str] = frozenset(),
    router: Router | None = None,
    request_log: RequestLog | None = None,
) -> FastAPI:
    """The app serving ``models`` (one, or several behind ``router``: by default all traffic to the first);
    with ``request_log`` every routed request is logged and ``POST /v1/feedback`` rates logged answers."""
    variants = {m.name: m for m in ([models] if isinstance(models, ChatModel) else models)}
    router = router or Router({name: float(i == 0) for i, name in enumerate(variants)})
    if set(router.weights) != set(variants):
        raise ValueError(f"router weights {sorted(router.weights)} do not name the served {sorted(variants)}")
    app = FastAPI(title="finetune-assets serve", docs_url=None, redoc_url=None, openapi_url=None)
    metrics, admission = Metrics(), Admission(limits.max_queue)
    app.state.admission = admission  # for tests and introspection: requests generating or waiting
    app.state.router = router

    @app.middleware("http")
    async def keys_and_metrics(request: Request, call_next):
        started = time.monotonic()
        route = request.url.path
        if api_keys and route.startswith("/v1"):
            given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
            if given not in api_keys:
                response = error_response(RequestError("a valid API key is required: Authorization: Bearer <key>",
                                                       status=401, code="invalid_api_key"))  # fmt: skip
                metrics.errors.labels("-", "401").inc()
                return response
        response = await call_next(request)
        if route.startswith("/v1"):
            variant = getattr(request.state, "variant", "-")  # "-": answered before a variant was chosen
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
        first = next(iter(variants))
        return {"status": "ok", "model": first, "variants": router.weights}

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(metrics.text(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models_list():
        return {"object": "list", "data": [row for m in variants.values() for row in m.models()["data"]]}

    def choose(body, request: Request) -> tuple[ChatModel, bool, str | None]:
        """(the variant, whether the router chose it, the user id): a named ``model`` is served as asked."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        user = body.get("user", request.headers.get("x-user-id"))
        if user is not None and (not isinstance(user, str) or not 0 < len(user) <= MAX_USER_CHARS):
            raise RequestError(f"'user' must be a string of 1 to {MAX_USER_CHARS} characters", "user")
        named = body.get("model")
        if named is None:
            return variants[router.pick(user)], True, user
        if named not in variants:
            raise RequestError(f"model {named!r} is not served here (served: {', '.join(variants)})", "model",
                               404, "model_not_found")  # fmt: skip
        return variants[named], False, user

    async def log(chat_model: ChatModel, routed: bool, user, body: dict, started: float, **row) -> None:
        if request_log is not None:
            row = {"id": row.pop("id", None) or f"chatcmpl-{uuid.uuid4().hex}", "variant": chat_model.name,
                   "routed": routed, "user_id": user, "messages": body.get("messages"),
                   "latency_s": time.monotonic() - started, **row}  # fmt: skip
            await asyncio.to_thread(request_log.log_response, row)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        started = time.monotonic()
        body = await read_json(request, limits)
        chat_model, routed, user = choose(body, request)
        request.state.variant = chat_model.name
        try:  # tokenizing off the event loop
            prepared = await asyncio.to_thread(chat_model.prepare, body, limits)
        except RequestError as err:  # a routed request the variant refused: counted against no one, logged
            await log(chat_model, routed, user, body, started, status=err.status, error=str(err))
            raise
        admission.enter()
        generating = time.monotonic()
        if prepared.stream:
            loop, queue = asyncio.get_running_loop(), asyncio.Queue()

            def on_token(ids):
                loop.call_soon_threadsafe(queue.put_nowait, ids)

            # the slot is held by the generation itself, whether or not the client stays to read it
            task = asyncio.ensure_future(asyncio.to_thread(chat_model.generate, prepared, on_token))
            task.add_done_callback(
                lambda _: (queue.put_nowait(None), admission.leave(time.monotonic() - generating))
            )
            logged = functools.partial(log, chat_model, routed, user, body, started)
            return StreamingResponse(stream(chat_model, prepared, queue, task, logged),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})  # fmt: skip
        try:
            ids, finish = await asyncio.to_thread(chat_model.generate, prepared)
        except Exception as err:
            await log(chat_model, routed, user, body, started, status=500, error=repr(err))
            raise
        finally:
            admission.leave(time.monotonic() - generating)
        count_tokens(chat_model.name, prepared, ids)
        reply = chat_model.completion(prepared, ids, finish)
        choice = reply["choices"][0]
        await log(chat_model, routed, user, body, started, id=reply["id"], status=200,
                  answer=answer_text(choice["message"]), finish_reason=choice["finish_reason"],
                  prompt_tokens=len(prepared.prompt_ids), completion_tokens=len(ids))  # fmt: skip
        return reply

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        if request_log is None:
            raise RequestError("this server keeps no request log, so there is nothing to rate (serve without "
                               "--no-request-log)", status=404, code="not_found")  # fmt: skip
        rating = parse_feedback(await read_json(request, limits))
        logged = await asyncio.to_thread(request_log.response, rating["response_id"])
        if logged is None:
            raise RequestError(f"no logged response has id {rating['response_id']!r}", "response_id", 404,
                               "response_not_found")  # fmt: skip
        if logged["status"] != 200:
            raise RequestError(f"response {rating['response_id']!r} was an error ({logged['status']}): there is "
                               "no answer to rate", "response_id")  # fmt: skip
        request.state.variant = logged["variant"]
        feedback_id = await asyncio.to_thread(request_log.log_feedback, **rating)
        return {"id": feedback_id, "object": "feedback", "response_id": rating["response_id"],
                "variant": logged["variant"], "label": rating["label"],
                "preferred": rating["preferred"] is not None}  # fmt: skip

    def count_tokens(variant: str, prepared: Prepared, ids: list[int]) -> None:
        metrics.tokens.labels(variant, "prompt").inc(len(prepared.prompt_ids))
        metrics.tokens.labels(variant, "completion").inc(len(ids))

    async def stream(chat_model: ChatModel, prepared: Prepared, queue: asyncio.Queue, task: asyncio.Future,
                     logged):  # fmt: skip
        """Server-sent chunks: the role, text deltas as tokens arrive, the finish reason, usage, [DONE]."""
        meta = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": chat_model.name}  # fmt: skip

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
        count_tokens(chat_model.name, prepared, ids)
        await logged(id=meta["id"], status=200, answer=answer_text(message), finish_reason=finish,
                     prompt_tokens=len(prepared.prompt_ids), completion_tokens=len(ids))  # fmt: skip

    return app


def answer_text(message: dict) -> str:
    """What the log keeps of an answer: its text, or the tool call as JSON."""
    if message.get("tool_calls"):
        return json.dumps([c["function"] for c in message["tool_calls"]], ensure_ascii=False)
    return message.get("content") or ""


def parse_feedback(body) -> dict:
    """A feedback body as log_feedback's arguments: ``response_id``, ``rating`` (up/down, true/false, 1/-1)
    and/or ``preferred`` (the answer the user wanted), optional ``comment`` and ``user``."""
    from finetune_assets.phases.data.feedback import parse_label
    from finetune_assets.phases.data.records import RecordError

    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    response_id = body.get("response_id")
    if not isinstance(response_id, str) or not response_id:
        raise RequestError("'response_id' is required: the id of a chat.completion this server returned",
                           "response_id")  # fmt: skip
    label = None
    if body.get("rating") is not None:
        try:
            label = parse_label(body["rating"])
        except RecordError:
            raise RequestError(f"'rating' must be up/down (or true/false, 1/-1), got {body['rating']!r}",
                               "rating") from None  # fmt: skip
    texts = {}
    for field in ("preferred", "comment", "user"):
        value = body.get(field)
        if value is not None and (
            not isinstance(value, str) or not value.strip() or len(value) > MAX_FEEDBACK_CHARS
        ):
            raise RequestError(f"'{field}' must be a non-empty string of at most {MAX_FEEDBACK_CHARS} characters",
                               field)  # fmt: skip
        texts[field] = value.strip() if value is not None else None
    if label is None and texts["preferred"] is None:
        raise RequestError("give a 'rating' (up/down) or a 'preferred' answer (or both)", "rating")
    return {"response_id": response_id, "label": label, "preferred": texts["preferred"],
            "comment": texts["comment"], "user_id": texts["user"]}  # fmt: skip


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
