"""raw_corpus: list the landing folder's data drops and read a drop into documents.

A *drop* is one top-level entry of the landing folder (a folder of files, or a single file); it is the
partition key of the raw_corpus asset. Reading a drop yields documents following the contract in
docs/ARCHITECTURE.md: ``id`` (sha1 of ``drop/relpath``, 16 hex chars), ``text``, ``source`` (path inside the
drop), ``drop``, ``content_hash`` (sha256 of text) and ``title``.

Seeding the demo's landing folder is phases.data.demo_seed; the reST and HTML readers are in phases.text.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from finetune_assets import io
from finetune_assets.config import CorpusConfig
from finetune_assets.phases.data.probes import canary_document
from finetune_assets.phases.text.html import html_to_text
from finetune_assets.phases.text.rst import first_heading

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
    """``docs`` plus one document carrying the PII-shaped ``canaries`` (phases.evaluation.guardrails), as raw data that
    redaction must clean before training: the leakage guardrail then checks no model ever emits them."""
    if not canaries:
        return docs

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
    if suffix == ".jsonl":  # line by line: one bad line or byte is set aside, the rest goes through
        return _read_jsonl(path, rel, drop, cfg.jsonl_text_field, problems)
    raw = io.read_text_file(path)  # strict: bad bytes are reported, not silently replaced
    if suffix in HTML_SUFFIXES:
        title, text = html_to_text(raw)
        return [make_document(drop, rel, text, title)]
    return [make_document(drop, rel, raw)]


def _read_jsonl(path: Path, rel: str, drop: str, field: str, problems: list[dict]) -> list[dict]:
    docs = []
    for line_no, _, record, error in io.iter_jsonl(path):
        if error:
            problems.append({"path": rel, "line": line_no, "reason": error})
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


@dataclass(frozen=True)
class IngestedDrop:
    documents: int  # written to documents.parquet, the planted canary document included
    problems: list[dict]  # files and lines set aside ({path, line?, reason}); also in problems.json
    stats: dict


def ingest_drop(
    landing_dir: Path, drop: str, cfg: CorpusConfig, out_dir: Path, canaries: list[dict]
) -> IngestedDrop:
    """The raw_corpus asset as one call: read the drop, plant the ``canaries`` (before redaction, so that
    the guardrails can tell whether any reached a model) and write documents.parquet, the canaries and
    problems.json to ``out_dir``. Raises EmptyCorpusError, naming the drop, when nothing is readable."""
    docs, problems, stats = read_drop(landing_dir, drop, cfg)
    require_documents(docs, f"data drop '{drop}' in {landing_dir}" + _problem_hint(problems))
    docs = with_canaries(docs, drop, canaries)
    io.write_json(canaries, out_dir / CANARIES_FILE)
    io.write_records_parquet(docs, out_dir / "documents.parquet")
    io.write_json({"problems": problems, "stats": stats}, out_dir / "problems.json")
    return IngestedDrop(len(docs), problems, stats)


def _problem_hint(problems: list[dict]) -> str:
    if not problems:
        return ""
    shown = "; ".join(f"{p['path']}: {p['reason']}" for p in problems[:3])
    return f" ({len(problems)} set aside: {shown}{'; ...' if len(problems) > 3 else ''})"
