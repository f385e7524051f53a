"""dedup_corpus: exact and near-duplicate removal with MinHash LSH (datasketch 2.0).

Two passes over the documents, in (drop, source) order so the outcome never depends on input order:
1. exact: the hash of the normalized text with punctuation stripped (whitespace/case/markup-only copies);
2. near: MinHash over word shingles, LSH for candidates, each candidate verified by its estimated Jaccard
   similarity before anything is removed. The first occurrence always wins.

The shingles are taken from text with reST inline markup stripped: the same page as reST source and as
rendered HTML differs mostly in markup (:func:`x` vs x), and those are the duplicates worth catching.
"""

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from datasketch import MinHash, MinHashLSH

from finetune_assets.config import DedupConfig

_ROLE = re.compile(r":(?:[\w.+-]+:)+`~?!?([^`<]*?)(?:\s*<[^>]*>)?`")
# Explicit markup that renders to nothing: labels, comments, index entries, authors, toctrees, setup code.
_INVISIBLE = re.compile(
    r"\.\. (?:_[^:]*:|\|[^|]+\||(?:index|highlight|moduleauthor|sectionauthor|toctree|tabularcolumns"
    r"|testsetup|testcleanup|only|include|raw)::)"
)
_VERSION_WORDS = {
    "versionadded": "New in version",
    "versionchanged": "Changed in version",
    "deprecated": "Deprecated since version",
}
_DIRECTIVE = re.compile(r"^(\s*)\.\. ([\w:-]+)::")
_OPTION = re.compile(r"^:[\w -]+:(\s|$)")
_WORD = re.compile(r"\w+")


def normalize(text: str) -> str:
    """Unicode NFKC, lowercase, whitespace collapsed to single spaces."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_key(text: str) -> str:
    """Key of the exact pass: normalized text without punctuation, hashed."""
    words = _WORD.findall(normalize(text))
    return hashlib.sha1(" ".join(words).encode()).hexdigest()


def strip_markup(text: str) -> str:
    """reST source reduced to what a reader sees: roles keep their text, invisible explicit markup
    (labels, comments, index entries, toctrees) goes with its indented body, directive markers and option
    lines go, and version directives read as Sphinx renders them ("Changed in version")."""
    out, skip_deeper_than = [], None
    for line in text.splitlines():
        stripped, indent = line.strip(), len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not stripped or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        is_comment = stripped.startswith(".. ") and "::" not in stripped and not stripped.startswith(".. _")
        if _INVISIBLE.match(stripped) or stripped == ".." or is_comment:
            skip_deeper_than = indent
            continue
        if _OPTION.match(stripped):
            continue
        out.append(_DIRECTIVE.sub(lambda m: m.group(1) + _VERSION_WORDS.get(m.group(2), ""), line))
    return _ROLE.sub(r"\1", "\n".join(out))


def shingles(text: str, k: int) -> list[bytes]:
    """Distinct k-word shingles of the markup-stripped, normalized text (one shingle if fewer words)."""
    words = _WORD.findall(normalize(strip_markup(text)))
    if len(words) <= k:
        return [" ".join(words).encode()]
    return list({" ".join(words[i : i + k]).encode() for i in range(len(words) - k + 1)})


def find_duplicates(
    texts: Sequence[str], num_perm: int = 128, threshold: float = 0.8, shingle_words: int = 5
) -> list[dict]:
    """Duplicates among ``texts`` taken in the given order (earlier wins).

    Returns one {index, reason: "exact"|"near", duplicate_of: index, jaccard} per removed text. Reused by
    the instruction phase on prompt+response strings.
    """
    removed: list[dict] = []
    first_by_key: dict[str, int] = {}
    survivors: list[int] = []
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in first_by_key:
            removed.append({"index": i, "reason": "exact", "duplicate_of": first_by_key[key], "jaccard": 1.0})
        else:
            first_by_key[key] = i
            survivors.append(i)
    if len(survivors) < 2:
        return removed
    # MinHash.bulk reuses one permutation state for every sketch: ~8x the per-document update loop.
    sketches = MinHash.bulk([shingles(texts[i], shingle_words) for i in survivors], num_perm=num_perm)
    # LSH only proposes candidates. Tuned at the threshold itself it misses many true pairs near it (at
    # 0.8 with 128 permutations: 60% of pairs with Jaccard 0.8, 31% at 0.85), so it is tuned lower for recall
    # and every candidate is verified against the real threshold below.
    lsh = MinHashLSH(threshold=threshold * 0.8, num_perm=num_perm)
    indexed: dict[int, MinHash] = {}
    for i, sketch in zip(survivors, sketches, strict=True):
        best, best_j = None, 0.0
        for candidate in sorted(lsh.query(sketch)):
            # LSH returns likely matches only; the estimate decides (ties go to the earlier text).
            j = sketch.jaccard(indexed[candidate])
            if j >= threshold and j > best_j:
                best, best_j = candidate, j
        if best is None:
            lsh.insert(i, sketch)
            indexed[i] = sketch
        else:
            removed.append({"index": i, "reason": "near", "duplicate_of": best, "jaccard": round(best_j, 4)})
    return sorted(removed, key=lambda r: r["index"])


def dedup_documents(docs: list[dict], cfg: DedupConfig) -> dict:
    """Remove exact and near duplicate documents.

    Returns {kept: documents in input order, removed: [{id, source, drop, reason, duplicate_of (kept doc
    id), jaccard}], stats: {input, exact_removed, near_removed, kept}}. Decisions are taken in
    (drop, source) order, so an earlier drop's copy wins and the result is deterministic.
    """
    order = sorted(range(len(docs)), key=lambda i: (docs[i]["drop"], docs[i]["source"]))
    kept, pairs, stats = _dedup_in_order(docs, order, cfg)
    removed = [
        {
            "id": docs[i]["id"],
            "source": docs[i]["source"],
            "drop": docs[i]["drop"],
            "reason": dup["reason"],
            "duplicate_of": docs[original]["id"],
            "jaccard": dup["jaccard"],
        }
        for i, original, dup in pairs
    ]
    return {"kept": kept, "removed": removed, "stats": stats}


def _dedup_in_order(docs: list[dict], order: list[int], cfg: DedupConfig) -> tuple[list[dict], list, dict]:
    """Run find_duplicates with decisions in ``order``; returns (kept docs in input order,
    [(removed index, kept index it duplicates, finding)], stats)."""
    dups = find_duplicates([docs[i]["text"] for i in order], cfg.num_perm, cfg.threshold, cfg.shingle_words)
    pairs = [(order[d["index"]], order[d["duplicate_of"]], d) for d in dups]
    dropped = {i for i, _, _ in pairs}
    kept = [doc for i, doc in enumerate(docs) if i not in dropped]
    stats = {
        "input": len(docs),
        "exact_removed": sum(d["reason"] == "exact" for d in dups),
        "near_removed": sum(d["reason"] == "near" for d in dups),
        "kept": len(kept),
    }
    return kept, pairs, stats


# --------------------------------------------------------------------------- standalone `finetune-assets dedup`
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".html", ".htm")


def read_dedup_inputs(paths: Sequence[Path]) -> tuple[list[dict], list[dict]]:
    """Documents {id, text, origin} in input order from JSONL files (a ``text`` field, optional ``id``) and
    folders of text files (id = path relative to the folder). What cannot be read is reported in
    ``problems`` ({path, line, reason}) and set aside; the rest goes through."""
    docs: list[dict] = []
    problems: list[dict] = []
    for path in map(Path, paths):
        if path.is_dir():
            _read_folder(path, docs, problems)
        elif path.is_file():
            _read_jsonl(path, docs, problems)
        else:
            raise FileNotFoundError(f"input {path} does not exist: give JSONL files or folders of text files")
    seen: set[str] = set()
    unique = []
    for doc in docs:
        if doc["id"] in seen:
            problems.append({"path": doc["origin"], "line": None, "reason": f"duplicate id {doc['id']!r}"})
        else:
            seen.add(doc["id"])
            unique.append(doc)
    return unique, problems


def _read_jsonl(path: Path, docs: list[dict], problems: list[dict]) -> None:
    import json

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        problems.append({"path": str(path), "line": None, "reason": f"unreadable: {err}"})
        return
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record["text"]
            if not isinstance(text, str):
                raise TypeError("'text' is not a string")
        except (ValueError, KeyError, TypeError) as err:
            reason = "no 'text' field" if isinstance(err, KeyError) else f"invalid line: {err}"
            problems.append({"path": str(path), "line": number, "reason": reason})
            continue
        doc_id = str(record.get("id", f"{path.name}:{number}"))
        docs.append({"id": doc_id, "text": text, "origin": f"{path}:{number}"})


def _read_folder(folder: Path, docs: list[dict], problems: list[dict]) -> None:
    from finetune_assets.phases.corpus import html_to_text

    for file in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            problems.append({"path": str(file), "line": None, "reason": f"unreadable: {err}"})
            continue
        if file.suffix.lower() in (".html", ".htm"):
            text = html_to_text(text)[1]
        docs.append({"id": str(file.relative_to(folder)), "text": text, "origin": str(file)})


def dedup_texts(docs: list[dict], cfg: DedupConfig) -> dict:
    """Exact + near-duplicate removal in input order (the first occurrence is kept).

    Returns {kept: [{id, text}], duplicates: [{id, duplicate_of, reason, jaccard}], stats}."""
    kept, pairs, stats = _dedup_in_order(docs, list(range(len(docs))), cfg)
    duplicates = [
        {
            "id": docs[i]["id"],
            "duplicate_of": docs[original]["id"],
            "reason": d["reason"],
            "jaccard": d["jaccard"],
        }
        for i, original, d in pairs
    ]
    return {
        "kept": [{"id": d["id"], "text": d["text"]} for d in kept],
        "duplicates": duplicates,
        "stats": stats,
    }
