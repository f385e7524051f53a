"""An OpenAI-compatible chat server for a Hugging Face model folder (optionally with a LoRA adapter).

    finetune-assets serve MODEL_DIR [--adapter DIR] [--host 127.0.0.1] [--port 8000] [--model-name NAME]
    python -m finetune_assets.phases.serving.serve MODEL_DIR ...          (the same, without the CLI's imports)

Endpoints (JSON in, JSON out):
- ``GET /health``                -> {"status": "ok", "model": NAME}
- ``GET /v1/models``             -> {"object": "list", "data": [{"id": NAME, "object": "model", ...}]}
- ``POST /v1/chat/completions``  -> {"id", "object": "chat.completion", "created", "model",
  "choices": [{"index": 0, "message": {"role": "assistant", "content"}, "finish_reason"}],
  "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}
  Body: ``messages`` (required), ``model`` (optional; when given it must be NAME), ``temperature`` (0 =
  greedy, the default), ``max_tokens`` (or ``max_completion_tokens``; default 256), ``seed``, ``n`` (only 1),
  ``stream`` (only false). Unknown OpenAI fields (top_p, stop, ...) are accepted and ignored.
Errors use OpenAI's shape {"error": {"message", "type", "param", "code"}}: 400 for a bad body (naming the
field), 404 for an unknown path or model, 413 for a body over 8 MiB.

Generation goes through phases.inference.generation (the tokenizer's chat template, the same rendering as training and
evaluation) and is serialized with a lock: HTTP requests are handled on threads, one generation runs at a
time. ``finish_reason`` is "length" when the answer used all of ``max_tokens``, else "stop"; token counts
come from re-tokenizing the rendered prompt and the answer text.

The server has no authentication: it binds 127.0.0.1 unless told otherwise.
"""

import argparse
import json
import logging
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from finetune_assets.phases.inference import generation

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 256

MAX_BODY_BYTES = 8 << 20

ROLES = ("system", "user", "assistant", "tool", "developer")


class RequestError(ValueError):
    """A client error, answered as an OpenAI-style JSON error with ``status``."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message)
        self.param, self.status, self.code = param, status, code


class ChatModel:
    """A loaded model behind a lock: ``complete(request body) -> chat.completion`` response dict."""

    def __init__(self, model_dir: Path, adapter_dir: Path | None = None, name: str | None = None):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.model_dir.name
        self.model, self.tokenizer = generation.load_for_inference(self.model_dir, adapter_dir)
        self.created = int(time.time())
        self.max_positions = getattr(self.model.config, "max_position_embeddings", None) or 2048
        self._lock = threading.Lock()

    def models(self) -> dict:
        return {
            "object": "list",
            "data": [
                {"id": self.name, "object": "model", "created": self.created, "owned_by": "finetune-assets"}
            ],
        }

    def complete(self, body) -> dict:
        messages, temperature, max_tokens, seed = self.parse(body)
        prompt = generation.render_chat(self.tokenizer, messages, add_generation_prompt=True)
        prompt_tokens = len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])
        with self._lock:
            content = generation.generate_chat(
                self.model,
                self.tokenizer,
                [messages],
                max_new_tokens=max_tokens,
                batch_size=1,
                temperature=temperature,
                seed=seed,
            )[0]
        completion_tokens = len(self.tokenizer(content, add_special_tokens=False)["input_ids"])
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "length" if completion_tokens >= max_tokens else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    def parse(self, body) -> tuple[list[dict], float, int, int]:
        """(messages, temperature, max_tokens, seed) from a request body, or a RequestError naming the field."""
        if not isinstance(body, dict):
            raise RequestError("the request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise RequestError(
                f"model {model!r} is not served here (this server serves {self.name!r})",
                "model",
                404,
                "model_not_found",
            )
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("'messages' must be a non-empty list of {role, content} objects", "messages")
        clean = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES:
                raise RequestError(
                    f"messages[{i}].role must be one of {', '.join(ROLES)}", f"messages[{i}].role"
                )
            content = message.get("content")
            if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
                if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                    raise RequestError("only text content parts are supported", f"messages[{i}].content")
                content = "".join(str(p.get("text", "")) for p in content)
            if not isinstance(content, str):
                raise RequestError(f"messages[{i}].content must be a string", f"messages[{i}].content")
            clean.append(
                {"role": "system" if message["role"] == "developer" else message["role"], "content": content}
            )
        temperature = body.get("temperature")
        temperature = 0.0 if temperature is None else temperature
        if (
            isinstance(temperature, bool)
            or not isinstance(temperature, int | float)
            or not 0 <= temperature <= 2
        ):
            raise RequestError("'temperature' must be a number between 0 and 2", "temperature")
        field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
        max_tokens = body.get(field)
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens:
            raise RequestError(f"'{field}' must be a positive integer", field)
        if max_tokens >= self.max_positions:
            raise RequestError(
                f"'{field}' must be below the model's context ({self.max_positions} tokens)", field
            )
        seed = body.get("seed")
        seed = 0 if seed is None else seed
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise RequestError("'seed' must be an integer", "seed")
        if body.get("n") not in (None, 1):
            raise RequestError("only n=1 is supported", "n")
        if body.get("stream"):
            raise RequestError("streaming is not supported; send stream=false", "stream")
        return clean, float(temperature), max_tokens, seed


class _Handler(BaseHTTPRequestHandler):
    server: "ChatHTTPServer"
    protocol_version = "HTTP/1.1"  # keep-alive for clients that reuse connections

    def do_GET(self):  # noqa: N802 - http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._send(200, {"status": "ok", "model": self.server.chat_model.name})
        elif path in ("/v1/models", "/models"):
            self._send(200, self.server.chat_model.models())
        else:
            self._error(RequestError(f"unknown path {self.path}", status=404, code="not_found"))

    def do_POST(self):  # noqa: N802
        path = self.path.split("?")[0].rstrip("/")
        try:
            body = self._read_json()  # always drain the body so the connection stays usable
            if path not in ("/v1/chat/completions", "/chat/completions"):
                raise RequestError(f"unknown path {self.path}", status=404, code="not_found")
            self._send(200, self.server.chat_model.complete(body))
        except RequestError as err:
            self._error(err)
        except Exception as err:  # noqa: BLE001 - a generation bug answers 500 instead of killing the thread
            log.exception("chat completion failed")
            self._send(500, {"error": {"message": f"{type(err).__name__}: {err}", "type": "server_error"}})

    def _read_json(self):
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise RequestError("bad Content-Length header") from None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", status=413)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise RequestError(f"the request body is not valid JSON: {err}") from None

    def _error(self, err: RequestError):
        kind = "invalid_request_error" if err.status < 500 else "server_error"
        self._send(
            err.status, {"error": {"message": str(err), "type": kind, "param": err.param, "code": err.code}}
        )

    def _send(self, status: int, payload: dict):
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        log.info("%s %s", self.address_string(), format % args)


class ChatHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], chat_model: ChatModel):
        self.chat_model = chat_model
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"


def make_server(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
) -> ChatHTTPServer:
    """Load the model, then bind (port 0 picks a free port; see ``server.url``). Call ``serve_forever()``."""
    chat_model = ChatModel(Path(model_dir), Path(adapter_dir) if adapter_dir else None, model_name)
    return ChatHTTPServer((host, port), chat_model)


def serve(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM. Prints one ``listening on URL`` line (stdout, flushed) once ready."""
    server = make_server(model_dir, adapter_dir, host, port, model_name)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {host} without authentication", file=sys.stderr, flush=True)

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"serving {server.chat_model.name} listening on {server.url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("model_dir", help="Hugging Face model folder (config, weights, tokenizer)")
    parser.add_argument("--adapter", metavar="DIR", help="LoRA adapter folder merged into the model")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one; default 8000)")
    parser.add_argument("--model-name", help="model id clients send (default: the folder's name)")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (INFO logs requests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(
        argparse.ArgumentParser(prog="finetune-assets serve", description=__doc__)
    ).parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    return serve(Path(args.model_dir), args.adapter, args.host, args.port, args.model_name)


if __name__ == "__main__":
    sys.exit(main())
