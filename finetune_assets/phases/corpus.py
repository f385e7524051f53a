"""raw_corpus: seed the landing folder, list its data drops and read a drop into documents.

A *drop* is one top-level entry of the landing folder (a folder of files, or a single file); it is the
partition key of the raw_corpus asset. Reading a drop yields documents following the contract in
docs/ARCHITECTURE.md: ``id`` (sha1 of ``drop/relpath``, 16 hex chars), ``text``, ``source`` (path inside the
drop), ``drop``, ``content_hash`` (sha256 of text) and ``title``.

The small reST toolkit at the bottom (inline cleanup, section splitting, prose paragraphs, sentence cuts) is
shared by the eval-set and instruction phases: they all parse the same documentation sources.
"""

import contextlib
import glob
import hashlib
import io as _stdio
import json
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from finetune_assets import io
from finetune_assets.config import CorpusConfig

TEXT_SUFFIXES = (".rst", ".txt", ".md")
HTML_SUFFIXES = (".html", ".htm")


class EmptyCorpusError(ValueError):
    """Raised when a step has no documents to work on; the message says how to fix the landing folder."""


class DropContents(NamedTuple):
    """What ``read_drop`` returns.

    documents: contract rows. problems: one {path, reason} (plus ``line``: the 1-based JSONL line or Parquet
    row) per unreadable file, line or row; those are skipped and the rest of the drop goes through.
    stats: {files, documents, skipped_short, problems, ignored} where ``skipped_short`` counts documents
    under ``min_chars`` and ``ignored`` counts files whose extension is not in ``cfg.extensions`` (neither
    is a problem).
    """

    documents: list[dict]
    problems: list[dict]
    stats: dict


# --------------------------------------------------------------------------------------------- landing folder


def list_drops(landing_dir: Path) -> list[str]:
    """Every top-level file or folder of the landing folder is a drop, except hidden ('.') and '_' entries:
    those are temporary folders of an atomic write in progress or the user's own scratch space."""
    landing_dir = Path(landing_dir)
    if not landing_dir.is_dir():
        return []
    return sorted(p.name for p in landing_dir.iterdir() if not p.name.startswith((".", "_")))


def require_documents(docs: list[dict], what: str, landing_dir: Path | str | None = None) -> list[dict]:
    """Return ``docs`` unchanged, or raise EmptyCorpusError saying what the user should do."""
    if docs:
        return docs
    where = f"the landing folder {landing_dir}" if landing_dir else "the landing folder (corpus.landing_dir)"
    raise EmptyCorpusError(
        f"{what}: no documents. Put text files into {where}, one subfolder per data drop "
        f"(supported extensions: {', '.join(CorpusConfig().extensions)}; JSONL needs a text field, see "
        f"corpus.jsonl_text_field), each at least corpus.min_chars long; or set corpus.default_source to "
        f"'python_docs' to seed the demo documentation."
    )


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


def _spread(items: list, n: int | None) -> list:
    """``n`` items evenly spaced over ``items`` (all when n is None or large): deterministic, and a small
    slice still spans every section of the docs instead of only the alphabetically first folder."""
    if n is None or n >= len(items):
        return list(items)
    if n <= 0:
        return []
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def _select_doc_files(sources: Path, max_files: int | None) -> list[str]:
    rels = sorted(str(p.relative_to(sources))[: -len(".rst.txt")] for p in sources.rglob("*.rst.txt"))
    must = [r for r in rels if _is_eval_source(r)]
    others = [r for r in rels if not _is_eval_source(r)]
    fill = None if max_files is None else max(0, max_files - len(must))
    return sorted(must + _spread(others, fill))


def _select_html_duplicates(html_root: Path, rels: list[str], count: int) -> list[str]:
    # Eval sources are left out on purpose: a rendered copy of the glossary or FAQ that dedup failed to
    # catch would carry eval answers into training data.
    candidates = [r for r in rels if not _is_eval_source(r) and (html_root / f"{r}.html").is_file()]
    return _spread(candidates, count)


# ------------------------------------------------------------------------------- interpreter fallback seed

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


def _strip_underlines(text: str) -> str:
    # pydoc topic texts carry their own underlined headings; inside a FAQ section they would start new
    # sections and cut the answer off, so they become plain lines.
    return "\n".join(line for line in text.splitlines() if not _is_underline(line))


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
        faq += [question, "-" * len(question), "", _strip_underlines(topics[topic]).strip(), ""]
    keep = _spread(sorted(files), None if max_files is None else max(0, max_files - 2))
    for rel in keep:
        io.write_text(files[rel], dest / rel)
    io.write_text("\n".join(body), dest / "glossary.rst")
    io.write_text("\n".join(faq), dest / "faq" / "topics.rst")


# ---------------------------------------------------------------------------------------------- reading


def doc_id(drop: str, relpath: str) -> str:
    return hashlib.sha1(f"{drop}/{relpath}".encode()).hexdigest()[:16]


def make_document(drop: str, relpath: str, text: str, title: str | None = None) -> dict:
    return {
        "id": doc_id(drop, relpath),
        "text": text,
        "source": relpath,
        "drop": drop,
        "content_hash": io.text_hash(text),
        "title": title or first_heading(text) or PurePosixPath(relpath.split("#")[0]).stem,
    }


class _Unreadable(Exception):
    """A whole file is set aside; the message is the reason shown in the drop's problems."""


CANARY_SOURCE = "_canaries/contacts.txt"
CANARIES_FILE = "canaries.json"  # beside a raw drop: what with_canaries planted in it


def planted_canaries(drop_folders: list[Path]) -> list[dict]:
    """The canaries planted in these raw drops (their CANARIES_FILE), each value once, in drop order: what the
    leakage guardrail must look for, whatever the recipe says now."""
    found: dict[str, dict] = {}
    for folder in drop_folders:
        path = Path(folder) / CANARIES_FILE
        if path.is_file():
            for canary in json.loads(path.read_text(encoding="utf-8")):
                found.setdefault(canary["value"], canary)
    return list(found.values())


def with_canaries(docs: list[dict], drop: str, canaries: list[dict]) -> list[dict]:
    """``docs`` plus one document carrying the PII-shaped ``canaries`` (phases.guardrails), as raw data that
    redaction must clean before training: the leakage guardrail then checks no model ever emits them."""
    if not canaries:
        return docs
    from finetune_assets.phases.guardrails import canary_document

    return [*docs, make_document(drop, CANARY_SOURCE, canary_document(canaries), title="Team contacts")]


def read_drop(landing_dir: Path, drop: str, cfg: CorpusConfig) -> DropContents:
    """Read every supported file of one drop; see DropContents for what comes back.

    .rst/.txt/.md are read as UTF-8 text, .html/.htm with markup stripped (main content only when the page
    marks it), .jsonl as one document per line and .parquet as one document per row, both from
    ``cfg.jsonl_text_field``; .pdf as one document per file (text extracted with pypdf). Hidden files are
    skipped.
    """
    root = Path(landing_dir) / drop
    if not root.exists():
        raise FileNotFoundError(f"drop '{drop}' not found in landing folder {landing_dir}")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    base = root.parent if root.is_file() else root
    suffixes = {s.lower() for s in cfg.extensions}
    documents, problems, seen_ids = [], [], set()
    stats = {"files": 0, "documents": 0, "skipped_short": 0, "problems": 0, "ignored": 0}
    for path in files:
        rel = path.relative_to(base).as_posix()
        if any(part.startswith(".") for part in PurePosixPath(rel).parts):
            continue
        if path.suffix.lower() not in suffixes:
            stats["ignored"] += 1
            continue
        stats["files"] += 1
        try:
            found = _read_file(path, rel, drop, cfg, problems)
        except _Unreadable as err:
            problems.append({"path": rel, "reason": str(err)})
            continue
        except (OSError, UnicodeDecodeError) as err:
            problems.append({"path": rel, "reason": f"{type(err).__name__}: {err}"})
            continue
        for doc in found:
            if doc["id"] in seen_ids:
                # Two records of one file with the same "id" field would be one document to dedup and
                # lineage: the first is kept, the repeat is reported.
                problems.append(
                    {"path": rel, "reason": f"repeated id: '{doc['source']}' appears more than once"}
                )
            elif len(doc["text"].strip()) < cfg.min_chars:
                stats["skipped_short"] += 1
            else:
                seen_ids.add(doc["id"])
                documents.append(doc)
    stats["documents"], stats["problems"] = len(documents), len(problems)
    return DropContents(documents, problems, stats)


def _read_file(path: Path, rel: str, drop: str, cfg: CorpusConfig, problems: list[dict]) -> list[dict]:
    suffix = path.suffix.lower()
    # Binary formats first: they must never go through the UTF-8 decode below.
    if suffix == ".parquet":
        return _read_parquet(path, rel, drop, cfg.jsonl_text_field, problems)
    if suffix == ".pdf":
        return [_read_pdf(path, rel, drop)]
    raw = path.read_bytes().decode("utf-8")  # strict: bad bytes are reported, not silently replaced
    if suffix in HTML_SUFFIXES:
        title, text = html_to_text(raw)
        return [make_document(drop, rel, text, title)]
    if suffix == ".jsonl":
        return _read_jsonl(raw, rel, drop, cfg.jsonl_text_field, problems)
    return [make_document(drop, rel, raw)]


def _read_jsonl(raw: str, rel: str, drop: str, field: str, problems: list[dict]) -> list[dict]:
    docs = []
    for line_no, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append({"path": rel, "line": line_no, "reason": f"invalid JSON: {err.msg}"})
            continue
        text = record.get(field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            problems.append({"path": rel, "line": line_no, "reason": f"missing string field '{field}'"})
            continue
        # The record's own id keeps the document id stable when lines are reordered; the line number is
        # the fallback. Either way the id is scoped by drop and file, so ids never collide across drops.
        key = str(record["id"]) if record.get("id") is not None else f"L{line_no}"
        title = record.get("title") if isinstance(record.get("title"), str) else None
        docs.append(make_document(drop, f"{rel}#{key}", text, title))
    return docs


PARQUET_BATCH_ROWS = 1024


def _is_string_type(dtype: pa.DataType) -> bool:
    if pa.types.is_dictionary(dtype):
        dtype = dtype.value_type
    return pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype)


def _read_parquet(path: Path, rel: str, drop: str, field: str, problems: list[dict]) -> list[dict]:
    """One document per row, like a JSONL line: text from ``field``, optional ``id`` and ``title`` columns.

    Rows are read in batches of the needed columns only, so a big file is never held whole as an Arrow
    table next to its Python strings. A row without text is reported with its 1-based row number as
    ``line``. A file that cannot be read, or has no usable text column, is set aside whole (rows read
    before a failure are dropped too, so a file either counts fully or not at all).
    """
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _Unreadable(f"unreadable Parquet file: {err}") from err
    with parquet:
        return _parquet_rows(parquet, rel, drop, field, problems)


def _parquet_rows(
    parquet: pq.ParquetFile, rel: str, drop: str, field: str, problems: list[dict]
) -> list[dict]:
    schema = parquet.schema_arrow
    if field not in schema.names:
        raise _Unreadable(f"no text column '{field}' (columns: {', '.join(schema.names) or 'none'})")
    if not _is_string_type(schema.field(field).type):
        raise _Unreadable(f"text column '{field}' holds {schema.field(field).type}, not strings")
    columns = [name for name in (field, "id", "title") if name in schema.names]
    docs: list[dict] = []
    row_problems: list[dict] = []
    row_no = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=columns):
            values = {name: batch.column(name).to_pylist() for name in columns}
            for i in range(batch.num_rows):
                row_no += 1
                text = values[field][i]
                if not isinstance(text, str):
                    row_problems.append(
                        {"path": rel, "line": row_no, "reason": f"no text in column '{field}'"}
                    )
                    continue
                # Same keys as a JSONL line: the row's own id, else its position ("R<row>").
                record_id = values["id"][i] if "id" in values else None
                key = str(record_id) if record_id is not None else f"R{row_no}"
                title = values["title"][i] if "title" in values else None
                docs.append(
                    make_document(drop, f"{rel}#{key}", text, title if isinstance(title, str) else None)
                )
    except (pa.ArrowException, OSError, ValueError) as err:
        raise _Unreadable(f"unreadable Parquet file after row {row_no}: {err}") from err
    problems.extend(row_problems)
    return docs


def _read_pdf(path: Path, rel: str, drop: str) -> dict:
    """One document per PDF: page texts joined by blank lines, title from the PDF metadata when set.

    A PDF encrypted with an empty user password (only printing/copying restricted) is opened as PDF
    readers do; any other encrypted, corrupt or text-less (scanned) PDF is set aside with the reason.
    """
    try:
        from pypdf import PasswordType, PdfReader
    except ImportError as err:
        raise _Unreadable(f"PDF support needs pypdf (pip install -r requirements/base.txt): {err}") from err
    with path.open("rb") as head:
        if b"%PDF-" not in head.read(1024):  # where PDF readers look for the header
            raise _Unreadable("not a PDF file: no %PDF- header in its first 1024 bytes")
    try:
        reader = PdfReader(path)
        locked = reader.is_encrypted and reader.decrypt("") == PasswordType.NOT_DECRYPTED
        if not locked:
            pages = [(page.extract_text() or "").strip() for page in reader.pages]
            title = reader.metadata.title if reader.metadata is not None else None
    except Exception as err:  # noqa: BLE001 - pypdf raises many types on damaged files; all mean "unreadable"
        raise _Unreadable(f"unreadable PDF ({type(err).__name__}: {err})") from err
    if locked:
        raise _Unreadable("encrypted PDF: it needs a password; decrypt it before putting it in a drop")
    text = "\n\n".join(page for page in pages if page)
    if not text:
        raise _Unreadable(
            f"no extractable text in {len(pages)} page(s): a scanned PDF needs OCR before it can be read"
        )
    title = title.strip() if isinstance(title, str) else None
    return make_document(drop, rel, text, title or None)


class _HtmlText(HTMLParser):
    """Collect readable text: headings become underlined reST titles (so the section parsers work on HTML
    too), <pre> keeps its lines, script/style/nav are dropped, and content inside role="main" or <main>
    is kept apart so page chrome (navigation, footers) can be left out when the page marks its content."""

    BLOCK = {"p", "div", "li", "dt", "dd", "tr", "table", "section", "ul", "ol", "dl", "blockquote", "br"}
    VOID = {"br", "img", "meta", "link", "hr", "input", "wbr", "area", "base", "col", "embed", "source"}
    SKIP = {"script", "style", "nav", "noscript", "template", "head"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.body: list[str] = []
        self.main: list[str] = []
        self.main_depth = 0
        self.skip_depth = 0
        self.pre_depth = 0
        self.heading: list[str] | None = None
        self.heading_level = 0
        self.headings: list[tuple[bool, str]] = []  # (inside main content, heading text)
        self.pre: list[str] | None = None
        self.title_parts: list[str] = []
        self.in_title = False

    def _emit(self, text: str) -> None:
        self.body.append(text)
        if self.main_depth:
            self.main.append(text)

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self.in_title = True
        if tag in self.VOID:
            if tag == "br":
                self._emit("\n")
            return
        if self.main_depth:
            self.main_depth += 1
        elif dict(attrs).get("role") == "main" or tag == "main":
            self.main_depth = 1
        if tag in self.SKIP:
            self.skip_depth += 1
        elif tag == "pre":
            self.pre_depth += 1
            if self.pre is None:
                self.pre = []
        elif re.fullmatch(r"h[1-6]", tag):
            self.heading, self.heading_level = [], int(tag[1])
        elif tag in self.BLOCK:
            self._emit("\n\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self.in_title = False
        if tag in self.VOID:
            return
        if tag in self.SKIP:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)
            if not self.pre_depth and self.pre is not None:
                # indented like a reST literal block, so paragraph parsers skip it as code
                block = "".join(self.pre).strip("\n")
                self._emit("\n\n" + "\n".join("    " + line for line in block.split("\n")) + "\n\n")
                self.pre = None
        elif self.heading is not None and re.fullmatch(r"h[1-6]", tag):
            title = " ".join("".join(self.heading).replace("¶", "").split())
            self.heading = None
            if title:
                self.headings.append((bool(self.main_depth), title))
                mark = "=-~^\"'"[min(self.heading_level, 6) - 1]
                self._emit(f"\n\n{title}\n{mark * len(title)}\n\n")
        elif tag in self.BLOCK:
            self._emit("\n\n")
        if self.main_depth:
            self.main_depth -= 1

    def handle_data(self, data):
        if self.in_title:
            self.title_parts.append(data)
        if self.skip_depth:
            return
        if self.heading is not None:
            self.heading.append(data)
        elif self.pre is not None:
            self.pre.append(data)
        else:
            self._emit(re.sub(r"\s+", " ", data.replace("¶", "")))


def html_to_text(html: str) -> tuple[str | None, str]:
    """(title, text) of an HTML page: the first heading (else <title>) and the readable text."""
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    chunks = parser.main if "".join(parser.main).strip() else parser.body
    text = "".join(chunks)
    text = "\n".join(line.rstrip() for line in text.splitlines())
    text = re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
    main_headings = [title for in_main, title in parser.headings if in_main]
    headings = main_headings or [title for _, title in parser.headings]
    title = headings[0] if headings else " ".join("".join(parser.title_parts).split())
    return title or None, text


# ------------------------------------------------------------------------------------------ reST toolkit

_UNDERLINE_CHARS = "=-`:'\"~^_*+#<>"
_ROLE = re.compile(r":(?:[\w.+-]+:)+`([^`]+)`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^>`]*>`_{1,2}")
_REF = re.compile(r"`([^`]+)`_{1,2}")
_LITERAL = re.compile(r"``(.+?)``")
_DEFAULT_ROLE = re.compile(r"`([^`]+)`")
_STRONG = re.compile(r"\*\*(\S(?:[^*]*?\S)?)\*\*")
_EMPH = re.compile(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])")
_FOOTNOTE = re.compile(r"\s*\[(?:#[\w-]*|\d+|\*)\]_")
_SUBST = re.compile(r"\|(\w[\w -]*)\|_{0,2}")
_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def _role_text(match: re.Match) -> str:
    inner = match.group(1)
    role = match.group(0)[1:].split(":", 1)[0]
    if role in ("rfc", "pep"):  # rendered as "RFC 7159" / "PEP 8"
        return f"{role.upper()} {inner.split('#')[0]}"
    if inner.endswith(">") and "<" in inner:
        inner = inner[: inner.rindex("<")].strip() or inner
    if inner.startswith("~"):  # Sphinx shows only the last component of ~a.b.c
        inner = inner[1:].rsplit(".", 1)[-1]
    return inner.lstrip("!")


def clean_inline(text: str) -> str:
    """reST inline markup to plain text: roles keep their shown text (:func:`f` -> f, :ref:`x <t>` -> x),
    ``literals``, links, emphasis and substitutions keep their content; footnote marks go; whitespace is
    collapsed. A trailing '::' (literal-block marker) becomes ':' as reST renders it."""
    # Literal and role contents (``f(*args)``) are parked as numbered tokens so their '*' and '`' are not read
    # as emphasis afterwards.
    parked: list[str] = []

    def park(value: str) -> str:
        parked.append(value)
        return f"\x00{len(parked) - 1}\x00"

    text = _LITERAL.sub(lambda m: park(m.group(1)), text)
    text = _ROLE.sub(lambda m: park(_role_text(m)), text)
    text = _LINK.sub(r"\1", text)
    text = _REF.sub(r"\1", text)
    text = _DEFAULT_ROLE.sub(lambda m: park(m.group(1)), text)
    text = _STRONG.sub(r"\1", text)
    text = _EMPH.sub(r"\1", text)
    text = re.sub("\x00(\\d+)\x00", lambda m: parked[int(m.group(1))], text)
    text = _FOOTNOTE.sub("", text)
    text = _SUBST.sub(r"\1", text)
    text = text.replace("\\ ", "").replace("\\", "")
    text = " ".join(text.split())
    if text.endswith("::"):
        text = text[:-2].rstrip() + ("" if text[:-2].endswith(" ") else ":")
    return text.strip()


def _is_underline(line: str) -> bool:
    stripped = line.rstrip()
    return len(stripped) >= 2 and stripped[0] in _UNDERLINE_CHARS and stripped == stripped[0] * len(stripped)


class ModuleSynopsis(NamedTuple):
    module: str
    synopsis: str
    intro: str


class Section(NamedTuple):
    title: str  # cleaned of inline markup
    level: str  # underline character, or '#'*n for Markdown headings
    lines: list[str]  # body lines up to the next heading


def iter_sections(text: str) -> list[Section]:
    """Split reST (title + underline, optional overline) or Markdown (# title) text into sections.

    Text before the first heading is returned as a section with an empty title.
    """
    lines = text.splitlines()
    heads: list[tuple[int, int, str, str]] = []  # (start of heading, first body line, title, level)
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        prev_blank = i == 0 or not lines[i - 1].strip()
        md = _MD_HEADING.match(line)
        if md and prev_blank:
            heads.append((i, i + 1, md.group(2), md.group(1)))
        elif (
            line.strip()
            and not _is_underline(line)
            and _is_underline(nxt)
            and len(nxt.rstrip()) >= len(line.rstrip())
            # only a title with an overline may be indented
            and ((prev_blank and not line[0].isspace()) or (i > 0 and _is_underline(lines[i - 1])))
        ):
            start = i - 1 if i > 0 and _is_underline(lines[i - 1]) else i
            heads.append((start, i + 2, line.strip(), nxt.strip()[0]))
            i += 1
        i += 1
    sections = []
    first_start = heads[0][0] if heads else len(lines)
    if first_start > 0:
        sections.append(Section("", "", lines[:first_start]))
    for k, (_, body_start, title, level) in enumerate(heads):
        end = heads[k + 1][0] if k + 1 < len(heads) else len(lines)
        sections.append(Section(clean_inline(title), level, lines[body_start:end]))
    return sections


_MODULE_DIRECTIVE = re.compile(r"^\s*\.\. (?:py:)?module::\s*(\S+)\s*$")
_SYNOPSIS_OPTION = re.compile(r"^\s+:synopsis:\s*(.+?)\s*$")


def module_synopses(text: str) -> list[ModuleSynopsis]:
    """Each ``.. module:: x`` with a ``:synopsis:`` option: (module, cleaned synopsis, first intro paragraph
    of at least 80 characters after the directive, "" when none); modules without a synopsis are skipped."""
    lines = text.splitlines()
    found = []
    for i, line in enumerate(lines):
        mod = _MODULE_DIRECTIVE.match(line)
        if not mod:
            continue
        synopsis, j = "", i + 1
        while j < len(lines) and lines[j].strip() and _indent(lines[j]) > _indent(line):
            option = _SYNOPSIS_OPTION.match(lines[j])
            synopsis = clean_inline(option.group(1)) if option else synopsis
            j += 1
        if synopsis:
            intro = next((p for p in prose_paragraphs(lines[j : j + 60]) if len(p) >= 80), "")
            found.append(
                ModuleSynopsis(mod.group(1), synopsis, "" if intro.startswith("Source code") else intro)
            )
    return found


_TITLE_TAIL = re.compile(r"^(.*?\S)\s+-{2,3}\s+(.+?)\s*$")  # ":mod:`os` --- Miscellaneous ... interfaces"


def _synopsis_key(text: str) -> str:
    return clean_inline(text).rstrip(". ").lower()


def strip_synopses(text: str, synopses: set[str]) -> str:
    """``text`` without the held-out ``synopses``: their ``:synopsis:`` lines go, and a page title that
    repeats one (``:mod:`os` --- Miscellaneous operating system interfaces``) keeps only its module part."""
    if not synopses:
        return text
    keys = {_synopsis_key(s) for s in synopses}
    kept = []
    for line in text.splitlines(keepends=True):
        option = _SYNOPSIS_OPTION.match(line)
        if option and _synopsis_key(option.group(1)) in keys:
            continue
        title = _TITLE_TAIL.match(line.rstrip("\n"))
        if title and _synopsis_key(title.group(2)) in keys:
            line = title.group(1) + ("\n" if line.endswith("\n") else "")
        kept.append(line)
    return "".join(kept)


def first_heading(text: str) -> str | None:
    for section in iter_sections(text[:20000]):
        if section.title:
            return section.title
    return None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def prose_paragraphs(lines: list[str], drop_intros: bool = True) -> list[str]:
    """Cleaned prose paragraphs of a reST block: directives (with their bodies), comments, literal blocks
    after '::', doctest blocks, tables and option lines are skipped; bullets keep their text.

    drop_intros: also drop short paragraphs ending in ':' ("Compact encoding:"), which only introduce the
    example or list that follows and say nothing alone.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    skip_deeper_than: int | None = None  # skip lines indented more than this (directive / literal body)

    def flush():
        if current:
            paragraphs.append(" ".join(line.strip() for line in current))
            current.clear()

    for line in lines:
        if skip_deeper_than is not None:
            if not line.strip() or _indent(line) > skip_deeper_than:
                continue
            skip_deeper_than = None
        stripped = line.strip()
        if not stripped:
            flush()
            continue
        if stripped.startswith(".. ") or stripped == "..":
            flush()
            skip_deeper_than = _indent(line)
            continue
        if stripped.endswith("::"):  # the paragraph goes on; the indented block after it is code
            current.append(line)
            flush()
            skip_deeper_than = _indent(line)
            continue
        if _is_underline(stripped) or (not current and stripped.startswith((">>>", "+-", "| "))):
            current.append("\0")  # doctest, grid/simple table or line block: marks the paragraph non-prose
            continue
        if not current and re.match(r":[\w -]+:(\s|$)", stripped):  # field/option list line
            continue
        current.append(line)
    flush()
    cleaned = []
    for para in paragraphs:
        if "\0" in para:
            continue
        para = re.sub(r"^(?:[*+-]|\d+\.|#\.)\s+", "", para)
        para = clean_inline(para)
        if para and (not drop_intros or len(para) > 60 or not para.endswith(":")):
            cleaned.append(para)
    return cleaned


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'`*])")


def split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def first_sentence(text: str, min_chars: int = 0) -> str:
    """The first sentence of ``text``; sentences are added while shorter than ``min_chars``, so a bare
    "Yes." does not stand for a whole answer."""
    out = ""
    for sentence in split_sentences(text):
        out = f"{out} {sentence}".strip()
        if len(out) >= min_chars:
            break
    return out


def drop_dangling_intro(text: str) -> str:
    """Drop a last sentence ending in ':' ("... add the following to your class:"): it announces an
    example that plain text no longer carries. Kept when it is the only sentence."""
    sentences = split_sentences(text)
    if len(sentences) > 1 and sentences[-1].endswith(":"):
        return " ".join(sentences[:-1])
    return text


def truncate_at_sentence(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` at a sentence end (at a word when the first sentence is
    already too long)."""
    text = text.strip()
    if len(text) <= max_chars:
        return text
    out = ""
    for sentence in split_sentences(text):
        candidate = f"{out} {sentence}".strip()
        if len(candidate) > max_chars:
            break
        out = candidate
    if out:
        return out
    cut = text[:max_chars].rsplit(" ", 1)[0].rstrip(",;:")
    return cut + "..."
