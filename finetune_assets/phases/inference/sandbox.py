"""python_eval: a sandboxed evaluator of Python expressions, the tool the T&R model calls.

The expression is parsed with ``ast`` and refused unless every node is in a small safe subset (literals,
operators, comprehensions, lambdas, calls to whitelisted builtins, public methods of builtin values); it then
runs in a separate interpreter with a wall-clock timeout, CPU and address-space limits and the whitelisted
builtins only.
"""

import ast
import json
import math
import signal
import subprocess
import sys

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
