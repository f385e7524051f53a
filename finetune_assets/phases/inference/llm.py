"""Chat clients for the teacher and the judge: an OpenAI-compatible endpoint, or a local HF model folder.

    client = make_client(cfg, cache_dir)                 # cfg: config.LLMEndpointConfig
    answers = client.complete([[{"role": "user", "content": "..."}], ...])   # str, or None when it failed
    client.stats()  # {"requests", "cache_hits", "failures", "retries"}

Both clients cache: one JSON file per request under ``cache_dir`` (``<sha256>.json`` in a two-letter
sub-folder), keyed by (endpoint, model, messages, temperature, max_tokens) and written atomically, so a second
run with the same prompts makes no request at all (and works with the endpoint down). Only successful answers
are cached. Identical conversations in one batch are asked once.

OpenAIChatClient: the official ``openai`` client against ``base_url``, the Bearer key from ``$api_key_env`` when
that variable is set (a local server needs none and gets no Authorization header; the key is never logged),
``timeout_s`` per request, at most ``concurrency`` requests in flight, and up to ``max_retries`` retries by the
SDK (exponential backoff with jitter, Retry-After honoured) on connection errors, timeouts, 408, 409, 429 and
5xx. 401/403/404 raise LLMEndpointError: they are configuration errors (key, base_url, model name) that every
other prompt would hit too. Other 4xx (a prompt over the context, say) fail that prompt only: None, counted
in ``failures``.

HFChatClient: ``cfg.model`` is a local model folder, generated in batches of ``concurrency`` through
phases.inference.generation (the model is loaded on the first prompt the cache cannot answer).
"""

import abc
import hashlib
import json
import logging
import os
import threading
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from finetune_assets.config import LLMEndpointConfig
from finetune_assets.io import write_json
from finetune_assets.phases.inference import generation

log = logging.getLogger(__name__)

Conversation = list[dict]


class LLMEndpointError(RuntimeError):
    """The endpoint refused the configuration (bad key, URL or model): retrying or going on cannot help."""


class ChatClient(Protocol):
    """What the teacher and the judge call. Counters: ``requests`` (calls actually made, retries included),
    ``cache_hits``, ``failures`` (prompts answered None), ``retries``."""

    requests: int
    cache_hits: int
    failures: int
    retries: int

    def complete(self, conversations: list[Conversation]) -> list[str | None]: ...


class _CachedClient(abc.ABC):
    """Counters, the response cache and in-batch deduplication; subclasses implement ``_fetch``."""

    endpoint: str  # part of the cache key: where answers come from

    def __init__(self, cfg: LLMEndpointConfig, cache_dir: Path | None):
        self.cfg = cfg
        self.cache_dir = Path(cache_dir) if (cache_dir is not None and cfg.cache) else None
        self.requests = self.cache_hits = self.failures = self.retries = 0
        self._count_lock = threading.Lock()

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "cache_hits": self.cache_hits,
            "failures": self.failures,
            "retries": self.retries,
        }

    def _count(self, **deltas: int) -> None:
        with self._count_lock:
            for name, delta in deltas.items():
                setattr(self, name, getattr(self, name) + delta)

    def cache_key(self, messages: Conversation) -> str:
        payload = {
            "base_url": self.endpoint,
            "model": self.cfg.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir is not None else None

    def _cache_get(self, key: str) -> str | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            content = json.loads(path.read_text(encoding="utf-8"))["content"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable entry: ask again (and overwrite it)
        return content if isinstance(content, str) else None

    def _cache_put(self, key: str, messages: Conversation, content: str) -> None:
        path = self._cache_path(key)
        if path is not None:
            entry = {
                "endpoint": self.endpoint,
                "model": self.cfg.model,
                "messages": messages,
                "content": content,
            }
            write_json(entry, path)

    def complete(self, conversations: list[Conversation]) -> list[str | None]:
        """One answer per conversation, in order: cached, fetched (and cached) or None when it failed."""
        keys = [self.cache_key(conv) for conv in conversations]
        answers: dict[str, str | None] = {}
        todo: dict[str, Conversation] = {}
        for key, conv in zip(keys, conversations, strict=True):
            if key in answers or key in todo:
                continue
            cached = self._cache_get(key)
            if cached is not None:
                answers[key] = cached
                self._count(cache_hits=1)
            else:
                todo[key] = conv
        if todo:
            answers.update(self._fetch(todo))
        return [answers[key] for key in keys]

    @abc.abstractmethod
    def _fetch(self, todo: dict[str, Conversation]) -> dict[str, str | None]:
        """Answers for {cache key: conversation}; each success is cached as soon as it arrives, so an
        interrupted run keeps what it paid for."""


class OpenAIChatClient(_CachedClient):
    """Any OpenAI-compatible /chat/completions endpoint (OpenAI, vLLM, llama.cpp, ``finetune-assets serve``)
    through the official ``openai`` client: its ``timeout`` and ``max_retries`` options do the waiting and
    the retrying, its typed errors say what went wrong. Every HTTP attempt is counted by an event hook on the
    client's transport (the SDK retries inside one call), so ``requests`` and ``retries`` stay exact."""

    def __init__(self, cfg: LLMEndpointConfig, cache_dir: Path | None = None):
        super().__init__(cfg, cache_dir)
        if not cfg.base_url:
            raise ValueError("OpenAIChatClient needs cfg.base_url (e.g. http://127.0.0.1:8000/v1)")
        import openai  # here, not at the top: the Dagster code location imports this module and needs no SDK

        self.base_url = cfg.base_url.rstrip("/")
        self.endpoint = self.base_url
        self.url = f"{self.base_url}/chat/completions"
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        # A local server needs no key: send no Authorization header at all rather than a made-up one.
        self._auth = {} if key else {"Authorization": openai.omit}
        self._attempts = threading.local()  # HTTP attempts of the prompt this thread is asking
        http_client = openai.DefaultHttpxClient(
            trust_env=not _is_loopback(self.base_url),  # no proxy for a loopback endpoint
            event_hooks={"request": [self._count_attempt]},
        )
        self._client = openai.OpenAI(
            base_url=self.base_url,
            api_key=key or "unused",
            timeout=cfg.timeout_s,
            max_retries=cfg.max_retries,
            http_client=http_client,
        )

    def _count_attempt(self, _request) -> None:
        self._attempts.count = getattr(self._attempts, "count", 0) + 1

    def _fetch(self, todo: dict[str, Conversation]) -> dict[str, str | None]:
        def ask_and_cache(key: str, messages: Conversation) -> str | None:
            content = self._ask(messages)
            if content is not None:
                self._cache_put(key, messages, content)
            return content

        if len(todo) == 1 or self.cfg.concurrency == 1:
            return {key: ask_and_cache(key, conv) for key, conv in todo.items()}
        with ThreadPoolExecutor(max_workers=self.cfg.concurrency, thread_name_prefix="llm") as pool:
            futures = {key: pool.submit(ask_and_cache, key, conv) for key, conv in todo.items()}
            try:
                return {key: future.result() for key, future in futures.items()}
            except LLMEndpointError:
                pool.shutdown(wait=True, cancel_futures=True)  # the same error awaits every other prompt
                raise

    def _ask(self, messages: Conversation) -> str | None:
        """One prompt, retried by the SDK: the answer, or None (counted) once retries are spent or on a
        4xx that only this prompt hits. 401/403/404 raise LLMEndpointError."""
        import openai

        self._attempts.count = 0
        content = None
        try:
            reply = self._client.chat.completions.create(
                model=self.cfg.model,
                messages=messages,
                temperature=self.cfg.temperature,
                max_tokens=self.cfg.max_tokens,
                extra_headers=self._auth,
            )
        except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as err:
            raise LLMEndpointError(
                f"{self.url} answered HTTP {err.status_code} ({_error_detail(err)}): check base_url, the model "
                f"name {self.cfg.model!r} and the API key in ${self.cfg.api_key_env}"
            ) from None
        except openai.APIStatusError as err:
            log.warning("%s: HTTP %s (%s)%s", self.url, err.status_code, _error_detail(err), self._gave_up())
        except openai.APIConnectionError as err:  # refused, reset, timed out
            log.warning("%s: %s%s", self.url, type(err).__name__, self._gave_up())
        else:
            content = _content(reply)
            if content is None:
                log.warning("%s: a reply without choices[0].message.content; not retried", self.url)
        finally:
            attempts = self._attempts.count
            self._count(requests=attempts, retries=max(0, attempts - 1))
        if content is None:
            self._count(failures=1)
        return content

    def _gave_up(self) -> str:
        attempts = self._attempts.count
        return "; not retried" if attempts <= 1 else f"; giving up after {attempts} attempts"


class HFChatClient(_CachedClient):
    """A local Hugging Face model folder (``cfg.model``) as teacher or judge, batched on this machine."""

    def __init__(self, cfg: LLMEndpointConfig, cache_dir: Path | None = None, seed: int = 0):
        super().__init__(cfg, cache_dir)
        self.model_dir = Path(cfg.model)
        if not generation.is_model_folder(self.model_dir):
            raise ValueError(
                f"hf backend: {self.model_dir} is not a Hugging Face model folder (no config.json)"
            )
        self.seed = seed  # sampling seed when temperature > 0 (part of the cache key)
        self.endpoint = f"hf://{self.model_dir.resolve()}#{_folder_fingerprint(self.model_dir)}/seed={seed}"
        self._loaded = None

    def _fetch(self, todo: dict[str, Conversation]) -> dict[str, str | None]:

        if self._loaded is None:
            self._loaded = generation.load_for_inference(self.model_dir)
        model, tokenizer = self._loaded
        items = list(todo.items())
        answers: dict[str, str | None] = {}
        step = self.cfg.concurrency * 8  # cache in chunks: an interrupted run keeps what it generated
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            self._count(requests=len(chunk))
            texts = generation.generate_chat(
                model,
                tokenizer,
                [conv for _, conv in chunk],
                max_new_tokens=self.cfg.max_tokens,
                batch_size=self.cfg.concurrency,
                temperature=self.cfg.temperature,
                seed=self.seed,
            )
            for (key, conv), text in zip(chunk, texts, strict=True):
                answers[key] = text
                self._cache_put(key, conv, text)
        return answers


def make_client(cfg: LLMEndpointConfig, cache_dir: Path | None = None) -> OpenAIChatClient | HFChatClient:
    """The client for ``cfg.backend`` ("openai" endpoint or "hf" folder); caching under ``cache_dir`` when
    ``cfg.cache`` is on and a folder is given."""
    if cfg.backend == "hf":
        return HFChatClient(cfg, cache_dir)
    return OpenAIChatClient(cfg, cache_dir)


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


def _content(reply) -> str | None:
    try:
        content = reply.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def _error_detail(err) -> str:
    """The server's error message (the SDK keeps an OpenAI-shaped body's ``error`` part), shortened; never
    our request headers."""
    body = err.body
    message = body.get("message", body) if isinstance(body, dict) else (body or err.message)
    return " ".join(str(message).split())[:200]


def _folder_fingerprint(folder: Path) -> str:
    """Cheap identity of a model folder's contents (names, sizes, mtimes): a retrained model at the same path
    gets new cache keys without hashing gigabytes of weights."""
    entries = sorted(
        (str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    )
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]
