"""BM25 retrieval over the domain corpus: chunking, an on-disk index and search.

The index folder holds data only, no pickles:
- ``chunks.parquet``: one row per chunk {chunk_id, doc_id, source, title, text}.
- ``index.json``: tokenizer settings, BM25 parameters, counts and a content hash over the chunks.

``RetrievalIndex.load`` rebuilds the BM25 statistics from the chunks (a second or two for the whole Python
documentation), so the tokenizer in this module is always the one that searches: nothing stale is unpickled.

Usage::

    stats = build(docs, cfg.retrieval, out_dir)   # chunk_documents, then build_index
    index = RetrievalIndex.load(out_dir)
    index.search("os.path.join", k=2)  # -> [{chunk_id, doc_id, source, title, text, score}, ...]
"""

import json
import re
from collections.abc import Iterable
from pathlib import Path

from finetune_assets import io
from finetune_assets.config import RetrievalConfig

INDEX_VERSION = 1

CHUNKS_FILE = "chunks.parquet"

INDEX_FILE = "index.json"

BM25_PARAMS = {"k1": 1.5, "b": 0.75, "epsilon": 0.25}

# A deliberately small English list. It includes a few Python keywords (in, is, not, for, if, and, or):
# in prose they are too frequent to help ranking. BM25's idf already damps whatever else is common.
STOPWORDS = frozenset(
    """a an the and or of to in on at by for with from as is are was were be been being it its this that these
    those there their they them then than so such do does did can could should would will shall may might must
    what which who whom how when where why i you he she we our your his her my me us not no if into about
    also use used using""".split()
)

# A token is a run of word characters, optionally dotted (os.path.join, 3.11). Dotted tokens are kept whole
# AND split into their parts, so "os.path.join" matches exactly and "join" still matches "os.path.join".
_TOKEN_RE = re.compile(r"\w+(?:\.\w+)*")

TOKENIZER_SETTINGS = {
    "lowercase": True,
    "pattern": _TOKEN_RE.pattern,
    "dotted_identifiers": "whole + parts",
    "stopwords": sorted(STOPWORDS),
}


def tokenize(text: str) -> list[str]:
    """Lowercase word tokens without stopwords; ``os.path.join`` -> [os.path.join, os, path, join]."""
    tokens: list[str] = []
    for match in _TOKEN_RE.finditer(text.lower()):
        token = match.group(0)
        if "." in token:
            tokens.append(token)
            tokens.extend(part for part in token.split(".") if part not in STOPWORDS)
        elif token not in STOPWORDS:
            tokens.append(token)
    return tokens


_ROLE_WITH_TITLE = re.compile(r":[\w:.-]+:`([^`<]*?)\s*<[^`>]*>`")  # :ref:`title <target>` -> title

_ROLE = re.compile(r":[\w:.-]+:`[~!]?([^`]*)`")  # :func:`~os.path.join` -> os.path.join

_LITERAL = re.compile(r"``([^`]+)``")

_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`_{1,2}")  # `text <url>`_ -> text

_INTERPRETED = re.compile(r"`([^`]+)`_{0,2}")

_UNDERLINE = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{2,}\s*$")

_LABEL = re.compile(r"^\s*\.\.\s+(_[^:]+:.*|\|[^|]+\|.*)$")  # .. _label: target / .. |subst| replace::

_DIRECTIVE = re.compile(r"^(\s*)\.\.\s+[\w:-]+::\s?")  # .. function:: join(...) -> join(...)

_OPTION = re.compile(r"^\s*:(noindex|module|platform|synopsis|deprecated|no-typesetting|nosubgroups)\b.*$")

_COMMENT = re.compile(r"^\s*\.\.(\s.*)?$")


def clean_rst(text: str) -> str:
    """Lightly strip reST markup: roles, literals, link targets, heading underlines, directive markers."""
    lines = []
    for line in text.splitlines():
        if _UNDERLINE.match(line) or _LABEL.match(line) or _OPTION.match(line):
            continue
        line = _DIRECTIVE.sub(r"\1", line)
        if _COMMENT.match(line):
            continue
        line = _ROLE_WITH_TITLE.sub(r"\1", line)
        line = _ROLE.sub(r"\1", line)
        line = _LITERAL.sub(r"\1", line)
        line = _LINK.sub(r"\1", line)
        line = _INTERPRETED.sub(r"\1", line)
        lines.append(line)
    return "\n".join(lines)


def chunk_documents(
    docs: list[dict], cfg: RetrievalConfig, exclude_doc_ids: Iterable[str] = ()
) -> list[dict]:
    """Split documents into overlapping word windows: {chunk_id, doc_id, source, title, text}.

    Windows hold ``cfg.chunk_words`` words and start every ``chunk_words - chunk_overlap`` words; the last
    window ends at the document's end (no tail chunk that a previous window already covers). ``chunk_id`` is
    ``<doc_id>#<n>``, stable across rebuilds. Documents whose id is in ``exclude_doc_ids`` (the eval sets'
    ``excluded_doc_ids``) are skipped.
    """
    if cfg.chunk_overlap >= cfg.chunk_words:
        raise ValueError(
            f"retrieval.chunk_overlap ({cfg.chunk_overlap}) must be smaller than retrieval.chunk_words "
            f"({cfg.chunk_words})"
        )
    excluded = set(exclude_doc_ids)
    step = cfg.chunk_words - cfg.chunk_overlap
    chunks = []
    for doc in docs:
        doc_id = str(doc["id"])
        if doc_id in excluded:
            continue
        words = clean_rst(doc.get("text") or "").split()
        if not words:
            continue
        source = str(doc.get("source") or "")
        title = str(doc.get("title") or source or doc_id)
        start = n = 0
        while True:
            window = words[start : start + cfg.chunk_words]
            chunks.append(
                {
                    "chunk_id": f"{doc_id}#{n}",
                    "doc_id": doc_id,
                    "source": source,
                    "title": title,
                    "text": " ".join(window),
                }
            )
            n += 1
            if start + cfg.chunk_words >= len(words):
                break
            start += step
    return chunks


def _chunks_hash(chunks: list[dict]) -> str:
    return io.text_hash("\n".join(f"{c['chunk_id']}\t{c['title']}\t{c['text']}" for c in chunks))


def build_index(chunks: list[dict], out_dir: Path) -> dict:
    """Write ``chunks.parquet`` + ``index.json`` into ``out_dir`` atomically and return the index stats.

    Stats: {version, num_chunks, num_docs, num_tokens, avg_chunk_tokens, vocab_size, content_hash, tokenizer,
    bm25}. ``content_hash`` covers chunk ids, titles and texts, so the same corpus gives the same hash.
    """
    if not chunks:
        raise ValueError("build_index needs at least one chunk: the corpus produced no text to index")
    tokenized = [tokenize(c["text"]) for c in chunks]
    vocab = set()
    for tokens in tokenized:
        vocab.update(tokens)
    num_tokens = sum(len(t) for t in tokenized)
    stats = {
        "version": INDEX_VERSION,
        "num_chunks": len(chunks),
        "num_docs": len({c["doc_id"] for c in chunks}),
        "num_tokens": num_tokens,
        "avg_chunk_tokens": round(num_tokens / len(chunks), 2),
        "vocab_size": len(vocab),
        "content_hash": _chunks_hash(chunks),
        "tokenizer": TOKENIZER_SETTINGS,
        "bm25": dict(BM25_PARAMS),
    }
    rows = [{k: str(c[k]) for k in ("chunk_id", "doc_id", "source", "title", "text")} for c in chunks]
    with io.atomic_dir(Path(out_dir)) as tmp:
        io.write_records_parquet(rows, tmp / CHUNKS_FILE)
        io.write_json(stats, tmp / INDEX_FILE)
    return stats


def build(docs: list[dict], cfg: RetrievalConfig, out_dir: Path) -> dict:
    """The retrieval_index asset as one call: ``docs`` (training-side) chunked and indexed into ``out_dir``."""
    return build_index(chunk_documents(docs, cfg), out_dir)


class RetrievalIndex:
    """BM25 (Okapi) over chunks; build with ``from_chunks`` or read an index folder with ``load``."""

    def __init__(self, chunks: list[dict], meta: dict | None = None):
        from rank_bm25 import BM25Okapi

        if not chunks:
            raise ValueError("RetrievalIndex needs at least one chunk")
        self.chunks = chunks
        self.meta = meta or {}
        # Pre-tokenized corpus: passing a tokenizer to rank_bm25 would start a multiprocessing pool.
        self._bm25 = BM25Okapi([tokenize(c["text"]) for c in chunks], **BM25_PARAMS)

    @classmethod
    def from_chunks(cls, chunks: list[dict]) -> "RetrievalIndex":
        return cls(chunks)

    @classmethod
    def load(cls, index_dir: Path) -> "RetrievalIndex":
        """Read an index folder written by ``build_index``; refuses a folder whose chunks do not match."""
        index_dir = Path(index_dir)
        meta_path, chunks_path = index_dir / INDEX_FILE, index_dir / CHUNKS_FILE
        if not meta_path.is_file() or not chunks_path.is_file():
            raise FileNotFoundError(
                f"{index_dir} is not a retrieval index (needs {INDEX_FILE} and {CHUNKS_FILE})"
            )
        meta = json.loads(meta_path.read_text())
        chunks = io.read_records(chunks_path)
        if meta.get("content_hash") != _chunks_hash(chunks):
            raise ValueError(
                f"{chunks_path} does not match the content hash in {meta_path}: rebuild the index"
            )
        return cls(chunks, meta)

    def __len__(self) -> int:
        return len(self.chunks)

    def search(self, query: str, k: int = 3) -> list[dict]:
        """Top ``k`` chunks for ``query``, best first, each a copy of the chunk with ``score``.

        Chunks sharing no term with the query are never returned, so fewer than ``k`` may come back.
        """
        import numpy as np

        tokens = tokenize(query)
        if not tokens or k <= 0:
            return []
        scores = self._bm25.get_scores(tokens)
        k = min(k, len(self.chunks))
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = sorted(top, key=lambda i: (-scores[i], i))
        freqs = self._bm25.doc_freqs
        return [
            {**self.chunks[i], "score": float(scores[i])} for i in top if any(t in freqs[i] for t in tokens)
        ]
