"""What `finetune-assets dedup` and dedup_corpus read: JSONL files and folders of text files, with every
unreadable line or file and every document over the size cap set aside with the reason."""

from collections.abc import Sequence
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import DedupConfig
from finetune_assets.phases.text.html import html_to_text

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


def read_dedup_inputs(
    paths: Sequence[Path], max_chars: int = DedupConfig().max_document_chars
) -> tuple[list[dict], list[dict]]:
    """Documents {id, text, origin} in input order from JSONL files (a ``text`` field, optional ``id``) and
    folders of text files. What cannot be read is reported in ``problems`` ({path, line, reason}) and set
    aside; the rest goes through. So is a document longer than ``max_chars`` characters: JSONL is streamed
    a line at a time and a text file is sized before it is read, so an oversized input is never held whole.

    A document without its own id is named by its line (``data.jsonl:3``) or its path in the folder
    (``sub/README.txt``). With several inputs the folder's own label comes first (``io.unique_labels``: the
    fewest trailing path parts that tell the inputs apart), so ``a/data.jsonl`` and ``b/data.jsonl``, or the
    folders ``f1`` and ``f2`` that both hold README.txt, never share an id. Ids given in the records are kept
    as they are; a repeat of one is reported, since it would make the output ambiguous."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist: give JSONL files or folders of text files")
    docs: list[dict] = []
    problems: list[dict] = []
    for path, label in zip(paths, io.unique_labels(paths), strict=True):
        if path.is_dir():
            _read_folder(path, f"{label}/" if len(paths) > 1 else "", max_chars, docs, problems)
        else:
            _read_jsonl(path, label, max_chars, docs, problems)
    seen: set[str] = set()
    unique = []
    for doc in docs:
        if doc["id"] in seen:
            problems.append({"path": doc["origin"], "line": None, "reason": f"duplicate id {doc['id']!r}"})
        else:
            seen.add(doc["id"])
            unique.append(doc)
    return unique, problems


def too_long(length: int, max_chars: int, unit: str = "characters") -> str:
    """The reason an oversized document is set aside, naming the setting that admits it."""
    return (
        f"longer than {max_chars:,} characters ({length:,} {unit}); split it, or raise "
        "dedup.max_document_chars (--max-document-chars)"
    )


# A JSON line of at most max_chars characters: UTF-8 takes up to 4 bytes a character, escapes a few more.
_BYTES_PER_CHAR = 6


def _read_jsonl(path: Path, label: str, max_chars: int, docs: list[dict], problems: list[dict]) -> None:
    try:
        for number, _, record, error in io.iter_jsonl(path, max_line_bytes=max_chars * _BYTES_PER_CHAR):
            text = record.get("text") if isinstance(record, dict) else None
            if error or not isinstance(text, str):
                reason = error or "no string 'text' field"
                problems.append({"path": str(path), "line": number, "reason": reason})
            elif len(text) > max_chars:
                problems.append({"path": str(path), "line": number, "reason": too_long(len(text), max_chars)})
            else:
                doc_id = str(record["id"]) if record.get("id") is not None else f"{label}:{number}"
                docs.append({"id": doc_id, "text": text, "origin": f"{path}:{number}"})
    except OSError as err:
        problems.append({"path": str(path), "line": None, "reason": f"unreadable: {err}"})


def _read_folder(folder: Path, prefix: str, max_chars: int, docs: list[dict], problems: list[dict]) -> None:
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        try:
            size = file.stat().st_size
            if size > max_chars * 4:  # more bytes than max_chars characters can take in UTF-8: not read
                problems.append(
                    {"path": str(file), "line": None, "reason": too_long(size, max_chars, "bytes")}
                )
                continue
            text = io.read_text_file(file)
        except (OSError, UnicodeDecodeError) as err:
            problems.append({"path": str(file), "line": None, "reason": f"unreadable: {err}"})
            continue
        if file.suffix.lower() in (".html", ".htm"):
            text = html_to_text(text)[1]
        if len(text) > max_chars:
            problems.append({"path": str(file), "line": None, "reason": too_long(len(text), max_chars)})
            continue
        docs.append(
            {"id": f"{prefix}{file.relative_to(folder).as_posix()}", "text": text, "origin": str(file)}
        )
