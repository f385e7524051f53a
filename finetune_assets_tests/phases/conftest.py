"""Fixtures shared by the T&R test modules: a tiny document set with doctests and its retrieval index."""

import pytest

from finetune_assets.phases.inference.retrieval import RetrievalIndex, chunk_documents
from finetune_assets_tests.phases.tr_fixtures import CFG, DOCTEST_RST


@pytest.fixture(scope="module")
def docs(tiny_corpus) -> list[dict]:
    rows = [
        {"id": f"doc{i}", "text": t, "source": f"doc{i}.rst", "title": f"Doc {i}"}
        for i, t in enumerate(tiny_corpus)
    ]
    return rows + [
        {"id": "doctests", "text": DOCTEST_RST, "source": "library/helpers.rst", "title": "Helpers"}
    ]


@pytest.fixture(scope="module")
def index(docs) -> RetrievalIndex:
    return RetrievalIndex.from_chunks(chunk_documents(docs, CFG))
