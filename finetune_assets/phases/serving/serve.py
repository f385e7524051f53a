"""An OpenAI-compatible chat server for a Hugging Face model folder (optionally with a LoRA adapter), on
FastAPI + uvicorn.

    finetune-assets serve MODEL_DIR|models:/finetune_assets@champion [--adapter DIR] [--host 127.0.0.1]
                          [--port 8000] [--model-name NAME]
    python -m finetune_assets.phases.serving.serve MODEL_DIR ...          (the same, without the CLI's imports)

Endpoints:
- ``GET /health``                -> {"status": "ok", "model": NAME}
- ``GET /metrics``               -> Prometheus text: request latency histogram, tokens, errors, by variant
- ``GET /v1/models``             -> {"object": "list", "data": [{"id": NAME, "object": "model", ...}]}
- ``POST /v1/chat/completions``  -> a ``chat.completion``, or with ``stream: true`` server-sent
  ``chat.completion.chunk`` events ending in ``data: [DONE]`` (``stream_options.include_usage`` adds a usage
  chunk). Body: ``messages`` (required), ``model`` (optional; when given it must be NAME), ``temperature``
  (0 = greedy, the default; at most 2), ``max_tokens`` / ``max_completion_tokens`` (default 256), ``seed``,
  ``n`` (only 1), ``tools`` (OpenAI function specs: listed to the model as the T&R variant was trained, in
  phases.inference.tools' protocol; a call comes back as ``tool_calls`` with finish_reason "tool_calls").

Limits (``Limits``; flags of ``serve``): a body over ``max_body_bytes`` gets 413; a body not received within
``body_timeout_s`` gets 408; a prompt that does not fit the context with its ``max_tokens`` gets 400
``context_length_exceeded`` (never a silent cut); one generation runs at a time and at most ``max_queue``
requests wait for it, beyond which a request gets 429 with Retry-After. Every error has OpenAI's shape
{"error": {"message", "type", "param", "code"}} and a bad value names its field: a 500 means a server bug.

Usage counts are the prompt's token ids and the generated ids themselves. ``finish_reason`` is "stop" when the
model ended its turn, "length" when ``max_tokens`` ran out, "tool_calls" for a tool call.

API keys: ``FINETUNE_ASSETS_API_KEYS`` (comma-separated) makes every /v1 route need ``Authorization: Bearer
<key>``; binding beyond loopback without keys is refused.
"""

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.phases.inference import generation, tools

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant", "tool", "developer")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEYS_ENV = "FINETUNE_ASSETS_API_KEYS"


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    body_timeout_s: float = 10.0
    max_queue: int = 8  # requests waiting for the one generation slot; beyond: 429
    max_tokens_cap: int | None = None  # the largest max_tokens accepted (default: the context)


class RequestError(ValueError):
    """A client error, answered as an OpenAI-style JSON error with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


@dataclass
class Prepared:
    """A validated request: the prompt's token ids and how to decode."""

    prompt_ids: list[int]
    temperature: float
    max_tokens: int
    seed: int
    stream: bool
    include_usage: bool
    with_tools: bool


class ChatModel:
    """A loaded model: ``prepare(body)`` validates a request, ``generate`` decodes it (one at a time)."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, name: str | None = None):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.model_dir.name
        self.model, self.tokenizer = generation.load_for_inference(self.model_dir, adapter_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.created = int(time.time())
        self.context = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self.stop_ids = generation.stop_token_ids(self.model, self.tokenizer)
        self._lock = threading.Lock()

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": self.name, "object": "model", "created": self.created, "owned_by": "finetune-assets"}
            ],
        }

    def prepare(self, body, limits: Limits = Limits()) -> Prepared:
        """Validate ``body`` (a RequestError names the field) and tokenize its prompt."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(
                f"model {model!r} is not served here (this server serves {self.name!r})", "model", 404,
                "model_not_found",
            )  # fmt: skip
        request_tools = parse_tools(body.get("tools"))
        messages = parse_messages(body.get("messages"), request_tools)
        temperature = _number(body, "temperature", 0.0, 0.0, 2.0)
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(field)
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        cap = min(limits.max_tokens_cap or self.context, self.context - 1)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= cap:
            raise RequestError(f"'{field}' must be an integer from 1 to {cap}", field)
        seed = body.get("seed")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError("'seed' must be an integer", "seed")
        if body.get("n") not in (None, 1):
            raise RequestError("only n=1 is supported", "n")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise RequestError("'stream' must be true or false", "stream")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise RequestError("'stream_options' must be an object", "stream_options")
        prompt = generation.render_chat(self.tokenizer, messages, add_generation_prompt=True)
        prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if len(prompt_ids) + max_tokens > self.context:
            raise RequestError(
                f"the prompt is {len(prompt_ids)} tokens and '{field}' {max_tokens}: together over the model's "
                f"context of {self.context} tokens; shorten the messages or lower '{field}'",
                "messages", 400, "context_length_exceeded",
            )  # fmt: skip
        return Prepared(prompt_ids, temperature, max_tokens, seed, stream, bool(options.get("include_usage")),
                        bool(request_tools))  # fmt: skip

    def generate(self, request: Prepared, on_token=None) -> tuple[list[int], str]:
        """(generated ids, finish reason "stop" | "length"); ``on_token(ids so far)`` after each token."""
        import torch

        with self._lock:
            if request.temperature > 0:
                torch.manual_seed(request.seed)
            stop_when = None
            if on_token is not None:

                def stop_when(ids):  # the decoder's per-token hook: it never stops the row here
                    on_token(list(ids))
                    return False

            [ids] = generation.decode_batch(
                self.model, [request.prompt_ids], max_new_tokens=request.max_tokens, stop_ids=self.stop_ids,
                pad_id=self.tokenizer.pad_token_id, temperature=request.temperature, stop_when=stop_when,
            )  # fmt: skip
        # decode_batch leaves the stop token out: a full budget of ids means no end of turn came
        return ids, "length" if len(ids) >= request.max_tokens else "stop"

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def completion(self, request: Prepared, ids: list[int], finish: str) -> dict:
        message, finish = assistant_message(self.text(ids).strip(), finish, request.with_tools)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage(request, ids),
        }


def usage(request: Prepared, ids: list[int]) -> dict:
    prompt, completion = len(request.prompt_ids), len(ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def assistant_message(content: str, finish: str, with_tools: bool) -> tuple[dict, str]:
    """The reply message: a tool call (when the request listed tools and the model made one) or text."""
    call = tools.parse_tool_call(content) if with_tools else None
    if call is None:
        return {"role": "assistant", "content": content}, finish
    arguments = json.dumps(call["arguments"], ensure_ascii=False)
    tool_call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": call["name"], "arguments": arguments}}  # fmt: skip
    return {"role": "assistant", "content": None, "tool_calls": [tool_call]}, "tool_calls"


def parse_tools(raw) -> list[tools.Tool]:
    """OpenAI function specs -> Tool (a RequestError names the bad entry)."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RequestError("'tools' must be a list of function tools", "tools")
    found = []
    for i, spec in enumerate(raw):
        function = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else None
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not function["name"]
        ):
            raise RequestError(
                f"tools[{i}] must be {{type: function, function: {{name, ...}}}}", f"tools[{i}]"
            )
        parameters = function.get("parameters") or {"type": "object", "properties": {}}
        if not isinstance(parameters, dict):
            raise RequestError(f"tools[{i}].function.parameters must be a JSON schema object", f"tools[{i}]")
        found.append(tools.Tool(function["name"], str(function.get("description") or ""), parameters))
    return found


def parse_messages(raw, request_tools: list[tools.Tool]) -> list[dict]:
    """Chat messages as training rendered them: tool calls in the T&R protocol's text, tools in the system."""
    if not isinstance(raw, list) or not raw:
        raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
    clean = []
    for i, message in enumerate(raw):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        content = message.get("content")
        if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise RequestError("only text content parts are supported", f"messages[{i}].content")
            content = "".join(str(p.get("text", "")) for p in content)
        calls = message.get("tool_calls") if message["role"] == "assistant" else None
        if calls:
            content = (content or "") + "".join(_call_text(call, i) for call in calls)
        if not isinstance(content, str):
            raise RequestError(f"messages[{i}].content must be a string", f"messages[{i}].content")
        role = "system" if message["role"] == "developer" else message["role"]
        clean.append({"role": role, "content": content})
    if request_tools:
        if clean[0]["role"] == "system":  # the client's system text takes the introduction's place
            clean[0] = {"role": "system", "content": tools.system_prompt(request_tools, clean[0]["content"])}
        else:
            clean.insert(0, {"role": "system", "content": tools.system_prompt(request_tools)})
    return clean


def _call_text(call, i: int) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    try:
        arguments = function["arguments"]
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
        return tools.format_tool_call(function["name"], arguments)
    except (TypeError, KeyError, json.JSONDecodeError):
        raise RequestError(
            f"messages[{i}].tool_calls entries need function.name and JSON function.arguments",
            f"messages[{i}].tool_calls",
        ) from None


def _number(body: dict, field: str, default: float, low: float, high: float) -> float:
    value = body.get(field)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise RequestError(f"'{field}' must be a number from {low:g} to {high:g}", field)
    return float(value)


def api_keys_from_env() -> frozenset[str]:
    return frozenset(k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip())


@dataclass
class Server:
    """A bound server: ``url`` (…/v1), ``run()`` blocks until ``stop()`` (or SIGTERM under ``serve``)."""

    url: str
    chat_model: ChatModel
    uvicorn_server: object
    sock: socket.socket
    thread: threading.Thread | None = None

    def run(self) -> None:
        asyncio.run(self.uvicorn_server.serve(sockets=[self.sock]))

    def start(self) -> "Server":
        """Serve on a thread (tests, notebooks); ``stop()`` ends it."""
        self.thread = threading.Thread(target=self.run, name="finetune-assets-serve", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn_server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn_server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)
        self.sock.close()


def make_server(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    limits: Limits = Limits(),
    api_keys: frozenset[str] | None = None,
) -> Server:
    """Load the model and bind (port 0 picks a free port): ``run()`` or ``start()`` it. ``api_keys`` default:
    FINETUNE_ASSETS_API_KEYS; binding beyond loopback without keys is refused."""
    import uvicorn

    from finetune_assets.phases.serving.api import create_app

    keys = api_keys_from_env() if api_keys is None else frozenset(api_keys)
    if host not in LOOPBACK and not keys:
        raise ValueError(
            f"serving on {host} needs API keys: set {API_KEYS_ENV}=key1,key2 (or bind 127.0.0.1)"
        )
    if str(model_dir).startswith("models:/"):  # a registered variant, by alias or version
        model_name = model_name or str(model_dir).removeprefix("models:/")
        model_dir = registered_folder(str(model_dir))
    chat_model = ChatModel(Path(model_dir), Path(adapter_dir) if adapter_dir else None, model_name)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(create_app(chat_model, limits, keys), log_level="warning", timeout_keep_alive=5,
                            backlog=2048, timeout_graceful_shutdown=5)  # fmt: skip
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{url_host}:{sock.getsockname()[1]}/v1"
    return Server(url, chat_model, uvicorn.Server(config), sock)


def registered_folder(uri: str) -> Path:
    """The model folder of ``models:/NAME@ALIAS`` (or ``/VERSION``) in the project's MLflow (MLFLOW_TRACKING_URI,
    else the local store under the home); a server's artifacts are downloaded once under the home."""
    from finetune_assets.config import default_home
    from finetune_assets.tracking import default_tracking_uri, resolve_model_uri

    home = default_home()
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(home)
    folder, version = resolve_model_uri(uri, tracking_uri, home / "served-models")
    log.warning("serving %s: version %s from %s", uri, version, folder)
    return folder


def serve(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    limits: Limits = Limits(),
) -> int:
    """Serve until SIGINT/SIGTERM. Prints one ``listening on URL`` line (stdout, flushed) once bound."""
    server = make_server(model_dir, adapter_dir, host, port, model_name, limits)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server.uvicorn_server, "should_exit", True))
    print(f"serving {server.chat_model.name} listening on {server.url}", flush=True)
    server.run()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    defaults = Limits()
    parser.add_argument(
        "model_dir",
        help="Hugging Face model folder, or a registered variant: "
        "models:/finetune_assets@champion (an alias) or models:/finetune_assets/3 (a version)",
    )
    parser.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder merged into the model")
    beyond = f"beyond loopback {API_KEYS_ENV} is required"
    parser.add_argument(
        "--host", default="127.0.0.1", help=f"interface to bind (default 127.0.0.1; {beyond})"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    parser.add_argument("--model-name", help="model id clients send (default: the folder's name)")
    parser.add_argument("--max-body-bytes", type=int, default=defaults.max_body_bytes)
    parser.add_argument("--body-timeout", type=float, default=defaults.body_timeout_s, help="seconds")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="requests waiting for generation before 429")  # fmt: skip
    parser.add_argument("--max-tokens-cap", type=int, default=None, help="largest max_tokens accepted")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (INFO logs requests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(
        argparse.ArgumentParser(prog="finetune-assets serve", description=__doc__)
    ).parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    limits = Limits(args.max_body_bytes, args.body_timeout, args.max_queue, args.max_tokens_cap)
    return serve(Path(args.model_dir), args.adapter, args.host, args.port, args.model_name, limits)


if __name__ == "__main__":
    sys.exit(main())
