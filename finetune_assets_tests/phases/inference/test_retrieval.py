"""Chunking, the BM25 tokenizer, search quality on a tiny corpus, and the index's round trip through disk."""

import pytest

from finetune_assets import io
from finetune_assets.config import RetrievalConfig
from finetune_assets.phases.inference.retrieval import (
    CHUNKS_FILE,
    INDEX_FILE,
    RetrievalIndex,
    build,
    build_index,
    chunk_documents,
    clean_rst,
    tokenize,
)


def _docs(texts: list[str]) -> list[dict]:
    return [
        {"id": f"doc{i}", "text": text, "source": f"library/doc{i}.rst", "title": f"Doc {i}"}
        for i, text in enumerate(texts)
    ]


@pytest.fixture
def corpus_docs(tiny_corpus) -> list[dict]:
    extra = [
        "The frobnicate helper rewrites a configuration in place and returns nothing.",
        "Use :func:`os.path.join` to build a path from components; it inserts the separator for you.",
    ]
    return _docs(tiny_corpus + extra)


def test_chunks_are_overlapping_windows_that_cover_the_document():
    words = [f"w{i}" for i in range(25)]
    cfg = RetrievalConfig(chunk_words=10, chunk_overlap=3)
    chunks = chunk_documents(_docs([" ".join(words)]), cfg)

    assert [c["chunk_id"] for c in chunks] == ["doc0#0", "doc0#1", "doc0#2", "doc0#3"]
    windows = [c["text"].split() for c in chunks]
    assert windows[0] == words[0:10] and windows[1] == words[7:17] and windows[-1] == words[21:25]
    for prev, cur in zip(windows, windows[1:], strict=False):
        assert prev[-3:] == cur[:3]  # exactly chunk_overlap words shared
    assert {w for window in windows for w in window} == set(words)
    assert all(c["doc_id"] == "doc0" and c["title"] == "Doc 0" for c in chunks)


def test_short_document_is_one_chunk_and_excluded_documents_are_skipped():
    cfg = RetrievalConfig(chunk_words=10, chunk_overlap=3)
    docs = _docs(["only five words in here", "an eval document", "   "])
    chunks = chunk_documents(docs, cfg, exclude_doc_ids={"doc1"})
    assert [(c["chunk_id"], c["text"]) for c in chunks] == [("doc0#0", "only five words in here")]


def test_overlap_must_be_smaller_than_window():
    with pytest.raises(ValueError, match="chunk_overlap"):
        chunk_documents(_docs(["a b c"]), RetrievalConfig(chunk_words=10, chunk_overlap=10))


def test_clean_rst_strips_markup_but_keeps_the_words():
    rst = (
        ".. _os-path:\n\nPath helpers\n============\n\n.. function:: join(path, *paths)\n   :noindex:\n\n"
        "   See :func:`~os.path.join` and :ref:`the tutorial <tut-files>`; ``sep`` is ``'/'``.\n"
        "   `Python <https://python.org>`_\n"
    )
    text = clean_rst(rst)
    assert "join(path, *paths)" in text and "os.path.join" in text and "the tutorial" in text
    assert "Python" in text and "sep is '/'" in text
    for markup in ("====", ":func:", ":ref:", "``", ".. ", "_os-path", ":noindex:", "<https", "tut-files"):
        assert markup not in text


def test_tokenizer_keeps_dotted_identifiers_whole_and_split():
    assert tokenize("Use os.path.join() for THE path.") == ["os.path.join", "os", "path", "join", "path"]


def test_bm25_ranks_the_document_with_a_rare_term_first(corpus_docs):
    cfg = RetrievalConfig(chunk_words=40, chunk_overlap=5)
    index = RetrievalIndex.from_chunks(chunk_documents(corpus_docs, cfg))

    # "function" is in several documents, "frobnicate" in one: the rare term decides.
    hits = index.search("Which function does frobnicate a value?", k=3)
    assert len(hits) == 3 and hits[0]["doc_id"] == "doc14"
    assert hits[0]["score"] > hits[1]["score"] >= hits[2]["score"] > 0

    hits = index.search("os.path.join", k=2)
    assert hits[0]["doc_id"] == "doc15"
    assert set(hits[0]) == {"chunk_id", "doc_id", "source", "title", "text", "score"}

    assert index.search("zzzz qqqq", k=3) == []  # no shared term: nothing, not random chunks


def test_index_round_trips_through_disk(corpus_docs, tmp_path):
    cfg = RetrievalConfig(chunk_words=20, chunk_overlap=5)
    chunks = chunk_documents(corpus_docs, cfg)
    stats = build_index(chunks, tmp_path / "index")

    assert (tmp_path / "index" / CHUNKS_FILE).is_file() and (tmp_path / "index" / INDEX_FILE).is_file()
    assert stats["num_chunks"] == len(chunks) and stats["num_docs"] == len(corpus_docs)
    assert stats["tokenizer"]["lowercase"] is True and stats["vocab_size"] > 50
    assert not list(tmp_path.glob(".index.*"))  # the temporary folder was renamed into place

    loaded = RetrievalIndex.load(tmp_path / "index")
    in_memory = RetrievalIndex.from_chunks(chunks)
    assert loaded.chunks == chunks and len(loaded) == len(chunks)
    for query in ("immutable sequence", "frobnicate", "context manager enter exit"):
        assert loaded.search(query, k=3) == in_memory.search(query, k=3)

    # Same chunks -> same content hash; a rebuild replaces the folder in one piece (the asset's one call,
    # retrieval.build, chunks and indexes the same way).
    assert build(corpus_docs, cfg, tmp_path / "index")["content_hash"] == stats["content_hash"]


def test_load_refuses_chunks_that_do_not_match_the_manifest(corpus_docs, tmp_path):
    chunks = chunk_documents(corpus_docs, RetrievalConfig())
    build_index(chunks, tmp_path / "index")
    io.write_records_parquet(chunks[:-1], tmp_path / "index" / CHUNKS_FILE)
    with pytest.raises(ValueError, match="content hash"):
        RetrievalIndex.load(tmp_path / "index")
    with pytest.raises(FileNotFoundError):
        RetrievalIndex.load(tmp_path / "missing")


def test_build_index_refuses_an_empty_corpus(tmp_path):
    with pytest.raises(ValueError, match="at least one chunk"):
        build_index([], tmp_path / "index")
