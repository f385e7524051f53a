"""Tools, the tool-call protocol, T&R training data and the T&R runtime.

Tools (``TOOLS``, listed to the model in OpenAI tool format by ``tool_specs``):
- ``search_docs(query, k)``: BM25 search over the retrieval index (phases.retrieval).
- ``python_eval(expression)``: a sandboxed evaluator. The expression is parsed with ``ast`` and refused unless
  every node is in a small safe subset (literals, operators, comprehensions, lambdas, calls to whitelisted
  builtins, public methods of builtin values); it then runs in a separate interpreter with a wall-clock
  timeout, CPU and address-space limits and the whitelisted builtins only.

Protocol: the assistant writes ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; the result comes
back as a message ``{"role": "tool", "content": <json>}``; the assistant then answers.

One prompt builder (``build_prompt``) serves training (phases.tr_data) and inference (``TRRuntime``):
system prompt listing the tools, then the user turn with a ``Context:`` block of retrieved passages.
"""

import ast
import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.retrieval import RetrievalIndex

# --- python_eval: static check ------------------------------------------------------------------------------

SAFE_BUILTINS = (
    "abs", "all", "any", "bin", "bool", "bytes", "chr", "dict", "divmod", "enumerate", "filter", "float",
    "frozenset", "hex", "int", "isinstance", "len", "list", "map", "max", "min", "oct", "ord", "pow", "range",
    "repr", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "zip",
)  # fmt: skip

# Public attributes of builtin values (str.split, list.index, dict.items, int.bit_length, ...). Only builtin
# values can exist inside a checked expression, so a name whitelist is enough. str.format/format_map are out:
# their format strings reach attributes ("{0.__class__}") without passing through the AST check.
_VALUE_TYPES = (str, bytes, list, tuple, dict, set, frozenset, int, float, complex)
SAFE_ATTRIBUTES = frozenset(name for t in _VALUE_TYPES for name in dir(t) if not name.startswith("_")) - {
    "format",
    "format_map",
}

_SAFE_NODES = (
    ast.Expression, ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.BinOp, ast.UnaryOp, ast.BoolOp,
    ast.Compare, ast.IfExp, ast.Subscript, ast.Slice, ast.ListComp, ast.SetComp, ast.DictComp,
    ast.GeneratorExp, ast.comprehension, ast.Name, ast.Call, ast.keyword, ast.Attribute, ast.Starred,
    ast.Lambda, ast.arguments, ast.arg, ast.JoinedStr, ast.FormattedValue, ast.Load, ast.Store,
    ast.operator, ast.unaryop, ast.boolop, ast.cmpop,
)  # fmt: skip
MAX_EXPRESSION_CHARS = 500
MAX_CONSTANT_EXPONENT = 10_000  # 2 ** 10_000 is fine; larger literal exponents are refused before running


class UnsafeExpression(ValueError):
    """The expression uses something outside python_eval's whitelist."""


def check_expression(expression: str) -> ast.Expression:
    """Parse ``expression`` and refuse anything outside the safe subset; returns the tree or raises."""
    if not isinstance(expression, str) or not expression.strip():
        raise UnsafeExpression("expression must be a non-empty string")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise UnsafeExpression(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as err:
        raise UnsafeExpression(f"not a single Python expression: {err.__class__.__name__}") from None
    nodes = list(ast.walk(tree))
    bound = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    bound |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    for node in nodes:
        if not isinstance(node, _SAFE_NODES):
            raise UnsafeExpression(f"{type(node).__name__} is not allowed")
        if isinstance(node, ast.Name):
            if node.id.startswith("_"):
                raise UnsafeExpression(f"name '{node.id}' is not allowed")
            if isinstance(node.ctx, ast.Load) and node.id not in SAFE_BUILTINS and node.id not in bound:
                raise UnsafeExpression(f"name '{node.id}' is not allowed")
        elif isinstance(node, ast.arg) and node.arg.startswith("_"):
            raise UnsafeExpression(f"name '{node.arg}' is not allowed")
        elif isinstance(node, ast.Attribute) and node.attr not in SAFE_ATTRIBUTES:
            raise UnsafeExpression(f"attribute '{node.attr}' is not allowed")
        elif isinstance(node, ast.keyword) and node.arg is not None and node.arg.startswith("_"):
            raise UnsafeExpression(f"keyword '{node.arg}' is not allowed")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift)):
            _check_exponent(node.right)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "pow":
            if len(node.args) >= 2:
                _check_exponent(node.args[1])
    return tree


def _check_exponent(node: ast.AST) -> None:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float)
        and node.value > MAX_CONSTANT_EXPONENT
    ):
        raise UnsafeExpression(f"exponent {node.value} is too large (max {MAX_CONSTANT_EXPONENT})")


# --- python_eval: run in a separate, limited interpreter ----------------------------------------------------

# The limits are set by the child itself, before it reads the expression, rather than in preexec_fn: Python's
# docs warn that preexec_fn can deadlock when the parent has threads (torch, Ray and Dagster all start some).
_RUNNER = r"""
import builtins, json, resource, sys
mem, cpu, max_chars = (int(a) for a in sys.argv[1:4])
names = sys.argv[4].split(",")
source = sys.stdin.read()
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
safe = {name: getattr(builtins, name) for name in names}
try:
    value = eval(compile(source, "<expression>", "eval"), {"__builtins__": safe}, {})
    if hasattr(value, "__next__"):
        raise TypeError(f"the expression is a lazy {type(value).__name__} iterator: wrap it in list(...)")
    text = repr(value)
    out = {"ok": True, "result": text[:max_chars]}
    if len(text) > max_chars:
        out["truncated"] = True
except Exception as err:
    out = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
sys.stdout.write(json.dumps(out))
"""


def python_eval(
    expression: str, timeout_s: float = 2.0, memory_mb: int = 256, max_result_chars: int = 1000
) -> dict:
    """Evaluate a safe Python expression in a sandbox: {"ok": True, "result": repr} or {"ok": False, "error"}.

    Refused before running: names other than whitelisted builtins and comprehension/lambda variables, any
    underscore name or attribute, statements, imports, ``open``/``eval``/``getattr``... Runs in a separate
    interpreter (no site, no user site, no script dir on sys.path, empty environment; PYTHONHASHSEED=0 so set
    reprs are reproducible) with ``timeout_s`` of wall clock, as much CPU time, ``memory_mb`` of address space
    and no file writes. Never raises, never hangs longer than ``timeout_s``.
    """
    try:
        check_expression(expression)
    except UnsafeExpression as err:
        return {"ok": False, "error": f"refused: {err}"}
    cpu = max(1, math.ceil(timeout_s))
    # -s -S -P + an empty environment give -I's isolation; -I itself would also ignore PYTHONHASHSEED.
    cmd = [sys.executable, "-s", "-S", "-P", "-c", _RUNNER, str(memory_mb << 20), str(cpu)]
    cmd += [str(max_result_chars), ",".join(SAFE_BUILTINS)]
    try:
        proc = subprocess.run(
            cmd,
            input=expression.strip(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            env={"PYTHONHASHSEED": "0"},
            cwd="/",
        )
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout: evaluation took longer than {timeout_s:g}s"}
    if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        # The CPU-time limit (as long as the wall-clock one) can fire first on an idle machine: same verdict.
        return {"ok": False, "error": f"timeout: evaluation used its {cpu}s of CPU time"}
    if proc.returncode != 0:
        why = "memory limit" if proc.returncode < 0 else f"exit code {proc.returncode}"
        return {"ok": False, "error": f"evaluation was stopped ({why})"}
    try:
        result = json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"ok": False, "error": "evaluation produced no result"}
    return result


# --- tools registry -----------------------------------------------------------------------------------------


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


# --- tool-call protocol -------------------------------------------------------------------------------------

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


# --- the shared prompt --------------------------------------------------------------------------------------

# Kept short: every T&R prompt starts with it, and with a small vocabulary (the tiny test model's) the longer
# wording alone took 233 of the 448 tokens the smoke recipe trains on.
SYSTEM_INTRO = "You answer questions about Python. Use the context when it helps."


def _signature(tool: Tool) -> str:
    props = tool.parameters.get("properties", {})
    args = ", ".join(props)
    return f"{tool.name}({args})"


def system_prompt() -> str:
    """The T&R system prompt: a compact rendering of ``tool_specs()`` plus the call syntax."""
    lines = [SYSTEM_INTRO, "Tools:"]
    lines += [f"- {_signature(t)}: {t.description}" for t in TOOLS.values()]
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


# --- the tool-use question ---------------------------------------------------------------------------------
# One wording for the eval sets' tool-use items (phases.evalsets) and the python_eval training conversations
# (phases.tr_data): the model learns to answer this question with a python_eval call.


def eval_question(expression: str) -> str:
    return f"What does the Python expression `{expression}` evaluate to?"


def eval_answer(expression: str, result: str) -> str:
    # Short on purpose: the answer has to fit the eval's tool_use_max_new_tokens after the call.
    return f"`{expression}` evaluates to `{result}`."


# --- runtime ------------------------------------------------------------------------------------------------

GenerateFn = Callable[[list[list[dict]], int], list[str]]  # (conversations, max_new_tokens) -> texts


class TRRuntime:
    """Answer questions with retrieval in the prompt and tool calls executed between generations.

    Each question gets the same prompt as training (``build_prompt`` with the top ``cfg.top_k`` passages, or
    none when ``use_retrieval=False``). When an answer contains a tool call, the tool runs, the call and a
    tool turn are appended and the model generates again, at most ``max_tool_rounds`` times.

    ``generate_fn(conversations, max_new_tokens) -> texts`` replaces the model (tests script it); by default
    the model in ``model_dir`` (+ ``adapter_dir``) is loaded on first use with phases.generation.
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
            from finetune_assets.phases.generation import generate_chat, load_for_inference

            model, tokenizer = load_for_inference(self.model_dir, self.adapter_dir)

            def _model_generate(convs: list[list[dict]], max_new_tokens: int) -> list[str]:
                return generate_chat(model, tokenizer, convs, max_new_tokens, batch_size=self.batch_size)

            self._generate_fn = _model_generate
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
