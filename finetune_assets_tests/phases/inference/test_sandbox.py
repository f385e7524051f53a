"""phases.inference.sandbox: python_eval refuses unsafe expressions and bounds time and memory."""

import time

import pytest

from finetune_assets.phases.inference.sandbox import check_expression, python_eval


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("sorted([3,1,2])", "[1, 2, 3]"),
        ("'a-b'.split('-')", "['a', 'b']"),
        ("2**10", "1024"),
        ("sorted(['bb', 'a', 'ccc'], key=lambda s: -len(s))", "['ccc', 'bb', 'a']"),
        ("{k: v for k, v in zip('ab', range(2))}", "{'a': 0, 'b': 1}"),
        ("divmod(17, 5), round(2.675, 2), 'x'.join(['1', '2']).upper()", "((3, 2), 2.67, '1X2')"),
    ],
)
def test_python_eval_computes_real_results(expression, expected):
    assert python_eval(expression) == {"ok": True, "result": expected}


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os')",
        "().__class__.__bases__[0].__subclasses__()",
        "(lambda: 0).__globals__",
        "open('/etc/passwd')",
        "'{0.__class__}'.format(1)",  # format strings reach attributes without passing the AST check
        "getattr(1, 'real')",
        "x = 1",
        "import os",
        "exec('1')",
        "",
    ],
)
def test_python_eval_refuses_unsafe_expressions(expression):
    result = python_eval(expression)
    assert result["ok"] is False and result["error"].startswith("refused")


@pytest.mark.parametrize("expression", ["10**10**10", "sum(range(10**12))"])
def test_python_eval_stops_runaway_computations(expression):
    start = time.monotonic()
    result = python_eval(expression, timeout_s=1.0)
    assert result["ok"] is False and "timeout" in result["error"]
    assert time.monotonic() - start < 5


def test_python_eval_reports_runtime_errors_and_memory_limits():
    assert python_eval("1 / 0") == {"ok": False, "error": "ZeroDivisionError: division by zero"}
    assert python_eval("[0] * 10**10")["error"].startswith("MemoryError")
    assert "list(...)" in python_eval("map(abs, [1])")["error"]


def test_check_expression_allows_comprehension_variables_but_not_free_names():
    check_expression("[n + 1 for n in range(3)]")
    with pytest.raises(ValueError, match="name 'n'"):
        check_expression("n + 1")
