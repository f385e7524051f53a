"""An OpenAI-compatible chat server for a Hugging Face model folder (optionally with a LoRA adapter), on
FastAPI + uvicorn. What a request means is chat.py (validation, the prompt, decoding, the reply); api.py is the
HTTP side (routes, limits, keys, streaming, metrics); this module binds, runs and stops the server.

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
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.phases.serving.chat import ChatModel, Limits, RequestError  # noqa: F401 - the public names

log = logging.getLogger(__name__)

LOOPBACK = ("127.0.0.1", "localhost", "::1")
API_KEYS_ENV = "FINETUNE_ASSETS_API_KEYS"
REQUEST_LOG_ENV = "FINETUNE_ASSETS_REQUEST_LOG"


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


def load_variant(source: str | Path, adapter_dir: Path | None = None, name: str | None = None) -> ChatModel:
    """A model folder, or a registered variant ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION``, loaded."""
    if str(source).startswith("models:/"):
        name = name or str(source).removeprefix("models:/")
        source = registered_folder(str(source))
    return ChatModel(Path(source), Path(adapter_dir) if adapter_dir else None, name)


def challenger_source(spec: str | Path) -> tuple[str | None, str]:
    """``NAME=SOURCE`` or ``SOURCE`` as (name or None, source)."""
    name, sep, source = str(spec).partition("=")
    if sep and name and not name.startswith(("models:", "/", ".")):
        return name, source
    return None, str(spec)


def make_server(
    model_dir: Path,
    adapter_dir: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    model_name: str | None = None,
    limits: Limits = Limits(),
    api_keys: frozenset[str] | None = None,
    challengers: list[str | Path] = (),
    weights: list[float] | None = None,
    request_log: str | None = None,
    seed: int = 0,
) -> Server:
    """Load the model(s) and bind (port 0 picks a free port): ``run()`` or ``start()`` it. ``api_keys``
    default: FINETUNE_ASSETS_API_KEYS; binding beyond loopback without keys is refused. ``challengers`` are
    served beside the model, split by ``weights`` (one per variant, the model first; default all to the
    model); ``request_log`` (a SQLAlchemy URL) logs every routed request and enables /v1/feedback."""
    import uvicorn

    from finetune_assets.phases.serving.api import create_app
    from finetune_assets.phases.serving.request_log import RequestLog
    from finetune_assets.phases.serving.router import Router

    keys = api_keys_from_env() if api_keys is None else frozenset(api_keys)
    if host not in LOOPBACK and not keys:
        raise ValueError(
            f"serving on {host} needs API keys: set {API_KEYS_ENV}=key1,key2 (or bind 127.0.0.1)"
        )
    served = [load_variant(model_dir, adapter_dir, model_name)]
    served += [load_variant(source, name=name) for name, source in map(challenger_source, challengers)]
    names = [m.name for m in served]
    if len(set(names)) != len(names):
        raise ValueError(f"two served variants have one name ({', '.join(names)}): name them apart")
    weights = list(weights) if weights is not None else [1.0] + [0.0] * len(challengers)
    if len(weights) != len(served):
        raise ValueError(f"{len(weights)} weights for {len(served)} variants ({', '.join(names)})")
    router = Router(dict(zip(names, weights, strict=True)), seed=seed)
    log_store = RequestLog(request_log) if request_log else None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # connectable from now on: the printed URL works before uvicorn takes the socket
    app = create_app(served, limits, keys, router, log_store)
    config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, backlog=2048,
                            timeout_graceful_shutdown=5)  # fmt: skip
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{url_host}:{sock.getsockname()[1]}/v1"
    return Server(url, served[0], uvicorn.Server(config), sock)


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


def default_request_log() -> str:
    """FINETUNE_ASSETS_REQUEST_LOG (a SQLAlchemy URL: the stack's Postgres), else sqlite under the home."""
    from finetune_assets.config import default_home
    from finetune_assets.phases.serving.request_log import default_url

    return os.environ.get(REQUEST_LOG_ENV) or default_url(default_home())


def serve(model_dir: Path, **options) -> int:
    """Serve until SIGINT/SIGTERM (``options``: make_server's). Prints one ``listening on URL`` line (stdout,
    flushed) once bound."""
    server = make_server(model_dir, **options)
    signal.signal(signal.SIGTERM, lambda *_: setattr(server.uvicorn_server, "should_exit", True))
    weights = server.uvicorn_server.config.app.state.router.weights
    split = ", ".join(f"{name} {w:.0%}" for name, w in weights.items())
    print(f"serving {split} listening on {server.url}", flush=True)
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
    parser.add_argument("--challenger", action="append", default=[], metavar="SOURCE",
                        help="another variant: a folder, models:/..., or NAME=SOURCE; repeatable")  # fmt: skip
    parser.add_argument("--weights", help="traffic shares, the model first, then each challenger (e.g. 0.9,0.1); "
                        "a request with a user id sticks to one variant")  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the router's draws for requests without a user"
    )
    parser.add_argument("--request-log", default=None, metavar="URL",
                        help=f"SQLAlchemy URL of the request/feedback log (default: ${REQUEST_LOG_ENV}, else "
                        "sqlite under the home)")  # fmt: skip
    parser.add_argument("--no-request-log", action="store_true", help="log nothing (and no /v1/feedback)")
    parser.add_argument("--log-level", default="WARNING", help="Python logging level (INFO logs requests)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = add_arguments(
        argparse.ArgumentParser(prog="finetune-assets serve", description=__doc__)
    ).parse_args(argv)
    return run_from_args(args)


def run_from_args(args) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    from finetune_assets.phases.serving.router import parse_weights

    limits = Limits(args.max_body_bytes, args.body_timeout, args.max_queue, args.max_tokens_cap)
    weights = None
    if args.weights:
        weights = list(parse_weights(args.weights, ["model", *args.challenger]).values())
    log_url = None if args.no_request_log else (args.request_log or default_request_log())
    return serve(Path(args.model_dir), adapter_dir=args.adapter, host=args.host, port=args.port,
                 model_name=args.model_name, limits=limits, challengers=args.challenger, weights=weights,
                 request_log=log_url, seed=args.seed)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
