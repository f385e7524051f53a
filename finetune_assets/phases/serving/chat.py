"""What a chat request means, apart from HTTP: validation that names the bad field (``RequestError``), the prompt
as training rendered it (tools in the T&R protocol of phases.inference.tools), decoding one request at a time,
and the OpenAI-shaped reply with usage counted from the token ids themselves. serve.py runs it behind api.py."""

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.phases.inference import generation, tools

DEFAULT_MAX_TOKENS = 256
ROLES = ("system", "user", "assistant", "tool", "developer")


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
        if not generation.is_model_folder(self.model_dir):
            raise FileNotFoundError(f"{self.model_dir} is not a Hugging Face model folder (no config.json)")
        self.name = name or self.model_dir.name
        self.model, self.tokenizer = generation.load_for_inference(self.model_dir, adapter_dir)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.created = int(time.time())
        self.context = (getattr(self.model.config, "max_position_embeddings", None) or 2048) - getattr(
            self.model, "num_virtual_tokens", 0
        )  # a prompt-tuned model's virtual tokens take the first positions
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

    def complete(self, body, limits: Limits | None = None) -> dict:
        """One non-streamed request, start to end: validate, decode, the chat.completion reply."""
        request = self.prepare(body, limits or Limits())
        return self.completion(request, *self.generate(request))

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
