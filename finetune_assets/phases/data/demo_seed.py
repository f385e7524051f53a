"""Seeding the demo's landing folder from the Python documentation on this machine.

The documentation comes from Debian's python3-doc (reST sources and their HTML build, which also gives the
near-duplicates dedup must find); without it, from the docstrings of the interpreter's own modules. Files
that hold eval-set sources are copied too: eval_sets takes them out before anything trains.
"""

import contextlib
import glob
import io as _stdio
import shutil
import sys
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import CorpusConfig
from finetune_assets.phases.data.corpus import list_drops
from finetune_assets.phases.text.rst import clean_inline, strip_underlines
from finetune_assets.phases.text.sampling import spread
from finetune_assets.phases.text.sentences import first_sentence


def find_python_docs() -> Path | None:
    """The reST sources of Debian's python3-doc package, whatever the Python version, or None."""
    for candidate in sorted(glob.glob("/usr/share/doc/python3*/html/_sources"), reverse=True):
        path = Path(candidate).resolve()
        if (path / "glossary.rst.txt").is_file():
            return path
    return None


def seed_demo_landing(landing_dir: Path, cfg: CorpusConfig) -> list[str]:
    """Seed an empty landing folder with the demo source; return the drop names created ([] if it had drops).

    python3-doc present: ``drop-0001`` holds the reST sources as ``<relpath>.rst`` (glossary and FAQ always,
    other files up to ``cfg.demo_max_files``) and ``drop-0002`` holds ``cfg.seed_html_duplicates`` rendered
    HTML pages of sources in drop-0001: real near-duplicates for dedup. Without python3-doc, drop-0001 is
    built from the interpreter's own docstrings and pydoc topics, including a synthesized ``glossary.rst``
    and ``faq/topics.rst`` in the formats the eval-set parsers read. Each drop is built in a hidden temporary
    folder and renamed into place, so a half-seeded drop is never listed.
    """
    landing_dir = Path(landing_dir)
    if list_drops(landing_dir) or cfg.default_source != "python_docs":
        return []
    landing_dir.mkdir(parents=True, exist_ok=True)
    sources = find_python_docs()
    if sources is None:
        with io.atomic_dir(landing_dir / "drop-0001") as tmp:
            _seed_from_interpreter(tmp, cfg.demo_max_files)
        return ["drop-0001"]
    rels = _select_doc_files(sources, cfg.demo_max_files)
    with io.atomic_dir(landing_dir / "drop-0001") as tmp:
        for rel in rels:
            dest = tmp / f"{rel}.rst"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sources / f"{rel}.rst.txt", dest)
    created = ["drop-0001"]
    html_rels = _select_html_duplicates(sources.parent, rels, cfg.seed_html_duplicates)
    if html_rels:
        with io.atomic_dir(landing_dir / "drop-0002") as tmp:
            for rel in html_rels:
                dest = tmp / f"{rel}.html"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sources.parent / f"{rel}.html", dest)
        created.append("drop-0002")
    return created


def _is_eval_source(rel: str) -> bool:
    return rel == "glossary" or rel.startswith("faq/")


def _select_doc_files(sources: Path, max_files: int | None) -> list[str]:
    rels = sorted(str(p.relative_to(sources))[: -len(".rst.txt")] for p in sources.rglob("*.rst.txt"))
    must = [r for r in rels if _is_eval_source(r)]
    others = [r for r in rels if not _is_eval_source(r)]
    fill = None if max_files is None else max(0, max_files - len(must))
    return sorted(must + spread(others, fill))


def _select_html_duplicates(html_root: Path, rels: list[str], count: int) -> list[str]:
    # Eval sources are left out on purpose: a rendered copy of the glossary or FAQ that dedup failed to
    # catch would carry eval answers into training data.
    candidates = [r for r in rels if not _is_eval_source(r) and (html_root / f"{r}.html").is_file()]
    return spread(candidates, count)


# Modules whose import has visible side effects (opens a browser, prints, starts a GUI) or is huge.
_UNSAFE_MODULES = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "test", "lib2to3"}


def _interpreter_modules() -> list[str]:
    return sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in _UNSAFE_MODULES)


def _module_doc(name: str) -> str | None:
    """Module docstring plus public top-level docstrings, as reST-ish text; None when unavailable.

    Pure-Python modules are read with ``ast`` (no code runs); built-in and extension modules are imported
    with stdout/stderr captured, since there is no source to read.
    """
    import ast
    import importlib
    import importlib.util
    import inspect

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    parts: list[tuple[str, str]] = []
    if spec.origin and spec.origin.endswith(".py"):
        try:
            tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            return None
        module_doc = ast.get_docstring(tree) or ""
        for node in tree.body:
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if is_def and not node.name.startswith("_") and ast.get_docstring(node):
                sig = "" if isinstance(node, ast.ClassDef) else f"({ast.unparse(node.args)})"
                parts.append((f"{node.name}{sig}", ast.get_docstring(node)))
    else:
        sink = _stdio.StringIO()
        try:
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - any import failure just means "no docs for this module"
            return None
        module_doc = inspect.getdoc(module) or ""
        for attr in sorted(dir(module)):
            obj = getattr(module, attr, None)
            doc = inspect.getdoc(obj) if (callable(obj) and not attr.startswith("_")) else None
            if doc and getattr(obj, "__module__", name) == name:
                parts.append((attr, doc))
    if not module_doc and not parts:
        return None
    lines = [name, "=" * len(name), "", module_doc, ""]
    for title, doc in parts:
        lines += [title, "-" * len(title), "", doc, ""]
    return "\n".join(lines)


def _seed_from_interpreter(dest: Path, max_files: int | None) -> None:
    from pydoc_data.topics import topics

    files: dict[str, str] = {}
    glossary: list[tuple[str, str]] = []
    for name in _interpreter_modules():
        doc = _module_doc(name)
        if not doc:
            continue
        files[f"modules/{name}.txt"] = doc
        summary = first_sentence(clean_inline(doc.split("\n\n")[2] if doc.count("\n\n") >= 2 else ""))
        if len(summary) >= 20:
            glossary.append((name, summary))
    for topic in sorted(topics):
        files[f"topics/{topic}.txt"] = topics[topic]
    body = ["Glossary", "========", "", ".. glossary::", ""]
    for term, definition in glossary:
        body += [f"   {term}", f"      {definition}", ""]
    faq = ["Topics FAQ", "==========", ""]
    for topic in sorted(topics):
        question = f"What is the {topic} topic about?"
        faq += [question, "-" * len(question), "", strip_underlines(topics[topic]).strip(), ""]
    keep = spread(sorted(files), None if max_files is None else max(0, max_files - 2))
    for rel in keep:
        io.write_text(files[rel], dest / rel)
    io.write_text("\n".join(body), dest / "glossary.rst")
    io.write_text("\n".join(faq), dest / "faq" / "topics.rst")
