"""The package layout holds its contracts: imports run one way, with no circle, and modules stay small.

Read from the source (ast), so a function-local import counts as much as a top-level one.
"""

import ast
from pathlib import Path

import finetune_assets

PACKAGE = Path(finetune_assets.__file__).parent
MAX_MODULE_LINES = 500
# The phase wings, lowest first: a wing imports only from wings before it (and from the core).
WING_ORDER = [
    "text",
    "inference",
    "data",
    "training",
    "evaluation",
    "serving",
]  # serving deploys what was evaluated
# Layers: a module imports only its own layer or the ones after it.
LAYERS = ["entry", "defs", "launch", "phases", "core"]
ENTRY = {"finetune_assets.definitions", "finetune_assets.cli", "finetune_assets.pipeline"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """Every finetune_assets module this file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] == "finetune_assets":
                for alias in node.names:  # `from pkg import module` imports that module
                    candidate = f"{node.module}.{alias.name}"
                    found.add(candidate if candidate in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "finetune_assets"}
    return {name for name in found if name in MODULES}


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: project_imports(path) - {name} for name, path in MODULES.items()}


def layer_of(name: str) -> str:
    if name in ENTRY:
        return "entry"
    parts = name.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("defs", "launch", "phases") else "core"


def wing_of(name: str) -> str | None:
    parts = name.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "phases" else None


def test_no_circular_import():
    state: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(name: str, stack: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep) :] + [dep]
                raise AssertionError("circular import: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep, [*stack, dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])


def test_imports_run_one_way_through_the_layers():
    backwards = [
        f"{a} -> {b}"
        for a, deps in GRAPH.items()
        for b in deps
        if LAYERS.index(layer_of(b)) < LAYERS.index(layer_of(a)) and b != "finetune_assets"
    ]
    assert not backwards, backwards


def test_phase_wings_import_only_lower_wings():
    backwards = [
        f"{a} -> {b}"
        for a, deps in GRAPH.items()
        for b in deps
        if wing_of(a) and wing_of(b) and WING_ORDER.index(wing_of(b)) > WING_ORDER.index(wing_of(a))
    ]
    assert not backwards, backwards
    assert {wing_of(n) for n in MODULES} - {None} == set(WING_ORDER)


def test_phases_never_import_dagster():
    offenders = []
    for name, path in MODULES.items():
        if layer_of(name) in ("phases", "launch", "core"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
            imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
            offenders += [f"{name}: {m}" for m in imported if m.split(".")[0].startswith("dagster")]
    assert not offenders, offenders


def test_no_module_is_over_the_size_limit():
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"split these modules (more than {MAX_MODULE_LINES} lines): {long}"


def test_code_location_loads_without_the_heavy_libraries():
    """The Dagster code location and the CLI import no torch, transformers, trl, ray or lm-eval: those load
    inside the functions that use them, so that the UI and `finetune-assets --help` start in seconds."""
    import subprocess
    import sys

    heavy = ("torch", "transformers", "trl", "peft", "ray", "lm_eval", "deepspeed")
    code = (
        "import sys, finetune_assets.definitions, finetune_assets.cli, finetune_assets.pipeline; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
