"""Tools, the tool-call protocol and the T&R runtime.

Tools (``TOOLS``, listed to the model in OpenAI tool format by ``tool_specs``):
- ``search_docs(query, k)``: BM25 search over the retrieval index (phases.inference.retrieval).
- ``python_eval(expression)``: the sandboxed evaluator of phases.inference.sandbox.

Protocol: the assistant writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; the result comes
back as a message ``{"role": "tool", "content": <json>}``; the assistant then answers.

One prompt builder (``build_prompt``) serves training (phases.data.tr_data) and inference (``TRRuntime``):
system prompt listing the tools, then the user turn with a ``Context:`` block of retrieved passages.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.inference.generation import GenerateFn, chat_generator, load_for_inference
from finetune_assets.phases.inference.retrieval import RetrievalIndex
from finetune_assets.phases.inference.sandbox import python_eval


def search_docs(index: RetrievalIndex, query: str, k: int = 3) -> list[dict]:
    """The ``k`` best passages for ``query``: chunk dicts {chunk_id, doc_id, source, title, text, score}."""
    return index.search(str(query), k=int(k))


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict  # JSON schema of the arguments object

    def spec(self) -> dict:
        """OpenAI tool format."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }


TOOLS: dict[str, Tool] = {
    "search_docs": Tool(
        name="search_docs",
        description="search the documentation, get passages",
        parameters={
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "what to look for"},
                "k": {"type": "integer", "description": "number of passages (1-5)", "default": 2},
            },
            "required": ["query"],
        },
    ),
    "python_eval": Tool(
        name="python_eval",
        description="evaluate a Python expression, get its repr",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "a single Python expression"}},
            "required": ["expression"],
        },
    ),
}

MAX_SEARCH_K = 5


def tool_specs() -> list[dict]:
    return [tool.spec() for tool in TOOLS.values()]


def run_tool(
    call: dict, index: RetrievalIndex | None, cfg: RetrievalConfig, eval_timeout_s: float = 2.0
) -> dict:
    """Execute a parsed tool call ({name, arguments}); always returns a JSON-able dict with ``ok``."""
    name, args = call.get("name"), call.get("arguments") or {}
    try:
        if name == "python_eval":
            return python_eval(str(args["expression"]), timeout_s=eval_timeout_s)
        if name == "search_docs":
            if index is None:
                return {"ok": False, "error": "no documentation index is available"}
            k = max(1, min(MAX_SEARCH_K, int(args.get("k", cfg.top_k))))
            hits = search_docs(index, str(args["query"]), k)
            return {"ok": True, "results": [passage_view(h, cfg.passage_chars) for h in hits]}
    except (KeyError, TypeError, ValueError) as err:
        return {"ok": False, "error": f"bad arguments for {name}: {err.__class__.__name__}: {err}"}
    return {"ok": False, "error": f"unknown tool {name!r}; available: {', '.join(TOOLS)}"}


TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


def format_tool_call(name: str, arguments: dict) -> str:
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def _find_tool_call(text: str) -> tuple[dict, int, int] | None:
    """(call, start, end) of the first well-formed tool call in ``text``; the closing tag is optional."""
    start = text.find(TOOL_CALL_OPEN) if isinstance(text, str) else -1
    if start < 0:
        return None
    body_start = start + len(TOOL_CALL_OPEN)
    brace = text.find("{", body_start)
    if brace < 0 or text[body_start:brace].strip():
        return None
    try:
        obj, end = json.JSONDecoder().raw_decode(text, brace)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models emit arguments as a JSON string (as the OpenAI API does)
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    rest = text[end:]
    if rest.lstrip().startswith(TOOL_CALL_CLOSE):
        end += len(rest) - len(rest.lstrip()) + len(TOOL_CALL_CLOSE)
    return {"name": obj["name"], "arguments": args}, start, end


def parse_tool_call(text: str) -> dict | None:
    """{"name", "arguments"} of the first ``<tool_call>{json}</tool_call>`` in ``text``, else None."""
    found = _find_tool_call(text)
    return found[0] if found else None


def tool_message(result: dict) -> dict:
    return {"role": "tool", "content": json.dumps(result, ensure_ascii=False)}


# Kept short: every T&R prompt starts with it, and with a small vocabulary (the tiny test model's) the longer
# wording alone took 233 of the 448 tokens the smoke recipe trains on.
SYSTEM_INTRO = "You answer questions about Python. Use the context when it helps."


def _signature(tool: Tool) -> str:
    props = tool.parameters.get("properties", {})
    args = ", ".join(props)
    return f"{tool.name}({args})"


def system_prompt(tools: Iterable[Tool] | None = None, intro: str = SYSTEM_INTRO) -> str:
    """The T&R system prompt: a compact rendering of ``tools`` (default: ``TOOLS``) plus the call syntax. The
    server renders a request's own tools through it, so a client's tools reach the model as training's do."""
    lines = [intro, "Tools:"]
    lines += [f"- {_signature(t)}: {t.description}" for t in (TOOLS.values() if tools is None else tools)]
    syntax = '{"name": ..., "arguments": {...}}'
    lines.append(f"To call a tool, reply with only {TOOL_CALL_OPEN}{syntax}{TOOL_CALL_CLOSE}")
    return "\n".join(lines)


def _truncate(text: str, max_chars: int) -> str:
    text = " ".join(str(text).split())
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > max_chars // 2 else cut).rstrip() + " ..."


def passage_view(passage: dict, max_chars: int) -> dict:
    return {"title": passage.get("title", ""), "text": _truncate(passage.get("text", ""), max_chars)}


def format_context(passages: list[dict], passage_chars: int) -> str:
    lines = ["Context:"]
    for i, p in enumerate(passages, 1):
        view = passage_view(p, passage_chars)
        lines.append(f"[{i}] {view['title']}: {view['text']}")
    return "\n".join(lines)


def build_prompt(question: str, passages: list[dict], cfg: RetrievalConfig) -> list[dict]:
    """[system, user] messages: the tool list, then the passages in a Context block (omitted when none)."""
    if passages:
        user = f"{format_context(passages, cfg.passage_chars)}\n\nQuestion: {question}"
    else:
        user = question
    return [{"role": "system", "content": system_prompt()}, {"role": "user", "content": user}]


def retrieve_passages(
    index: RetrievalIndex, query: str, k: int, exclude_doc_ids: Iterable[str] = ()
) -> list[dict]:
    """Top ``k`` passages for ``query``, skipping chunks of excluded documents."""
    excluded = set(exclude_doc_ids)
    hits = index.search(query, k=k + (4 * k if excluded else 0))
    return [h for h in hits if h["doc_id"] not in excluded][:k]


def eval_question(expression: str) -> str:
    return f"What does the Python expression `{expression}` evaluate to?"


def eval_answer(expression: str, result: str) -> str:
    # Short on purpose: the answer has to fit the eval's tool_use_max_new_tokens after the call.
    return f"`{expression}` evaluates to `{result}`."


class TRRuntime:
    """Answer questions with retrieval in the prompt and tool calls executed between generations.

    Each question gets the same prompt as training (``build_prompt`` with the top ``cfg.top_k`` passages, or
    none when ``use_retrieval=False``). When an answer contains a tool call, the tool runs, the call and a
    tool turn are appended and the model generates again, at most ``max_tool_rounds`` times.

    ``generate_fn(conversations, max_new_tokens) -> texts`` replaces the model (tests script it); by default
    the model in ``model_dir`` (+ ``adapter_dir``) is loaded on first use with phases.inference.generation.
    """

    def __init__(
        self,
        model_dir: Path | None,
        index: RetrievalIndex,
        adapter_dir: Path | None = None,
        max_new_tokens: int = 128,
        max_tool_rounds: int = 2,
        cfg: RetrievalConfig | None = None,
        use_retrieval: bool = True,
        batch_size: int = 8,
        eval_timeout_s: float = 2.0,
        generate_fn: GenerateFn | None = None,
    ):
        if generate_fn is None and model_dir is None:
            raise ValueError("TRRuntime needs a model_dir or a generate_fn")
        self.model_dir, self.adapter_dir, self.index = model_dir, adapter_dir, index
        self.max_new_tokens, self.max_tool_rounds = max_new_tokens, max_tool_rounds
        self.cfg = cfg or RetrievalConfig()
        self.use_retrieval, self.batch_size, self.eval_timeout_s = use_retrieval, batch_size, eval_timeout_s
        self._generate_fn = generate_fn

    def _generate(self, conversations: list[list[dict]]) -> list[str]:
        if self._generate_fn is None:
            model, tokenizer = load_for_inference(self.model_dir, self.adapter_dir)
            self._generate_fn = chat_generator(model, tokenizer, self.batch_size)
        return self._generate_fn(conversations, self.max_new_tokens)

    def answer(self, question: str) -> dict:
        return self.answer_batch([question])[0]

    def answer_batch(self, questions: list[str]) -> list[dict]:
        """[{question, answer, tool_calls: [{name, arguments, result}], passages, messages}], input order."""
        states = []
        for question in questions:
            passages = retrieve_passages(self.index, question, self.cfg.top_k) if self.use_retrieval else []
            states.append(
                {
                    "question": question,
                    "answer": "",
                    "tool_calls": [],
                    "passages": passages,
                    "messages": build_prompt(question, passages, self.cfg),
                }
            )
        active, rounds = list(range(len(states))), 0
        while active:
            outputs = self._generate([states[i]["messages"] for i in active])
            still_active = []
            for i, text in zip(active, outputs, strict=True):
                state, found = states[i], _find_tool_call(text)
                if found is None or rounds >= self.max_tool_rounds:
                    # Out of rounds: whatever surrounds an unexecuted call is the answer.
                    answer = text if found is None else (text[: found[1]] + text[found[2] :])
                    state["answer"] = answer.strip()
                    state["messages"].append({"role": "assistant", "content": text})
                    continue
                call, start, _ = found
                result = run_tool(call, self.index, self.cfg, eval_timeout_s=self.eval_timeout_s)
                state["tool_calls"].append({**call, "result": result})
                # The call is re-serialized in the training format; text the model wrote before it is kept.
                content = (text[:start] + format_tool_call(call["name"], call["arguments"])).strip()
                state["messages"] += [{"role": "assistant", "content": content}, tool_message(result)]
                still_active.append(i)
            active, rounds = still_active, rounds + 1
        return states
