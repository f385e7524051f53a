"""dedup phase: exact and MinHash near-duplicate removal."""

import random

from finetune_assets.config import DedupConfig
from finetune_assets.phases import corpus
from finetune_assets.phases.corpus import html_to_text, make_document
from finetune_assets.phases.dedup import dedup_documents, find_duplicates, normalize, strip_markup

# Distinct topics so that unrelated documents share (almost) no 5-word shingles.
TOPICS = ["rivers and lakes", "compilers and parsers", "medieval castles", "bread baking", "chess openings"]


def _long_text(topic: str, n: int = 60) -> str:
    rng = random.Random(topic)
    vocab = [f"{w}{i}" for i, w in enumerate(topic.split() * 40)]
    return " ".join(rng.choice(vocab) for _ in range(n * 5)) + f" about {topic}."


def _docs() -> list[dict]:
    docs = [make_document("drop-1", f"{t.split()[0]}.txt", _long_text(t)) for t in TOPICS]
    original = docs[0]["text"]
    exact = "  " + original.upper().replace(" ", "\n ") + " !!"  # case, whitespace, punctuation only
    words = original.split()
    for i in (10, 50, 90):  # 3 words changed in a 300-word document
        words[i] = "CHANGED"
    docs.append(make_document("drop-2", "copy.txt", exact))
    docs.append(make_document("drop-2", "near.txt", " ".join(words)))
    return docs


def test_normalize():
    assert normalize("  Ｆｕｌｌ\u00a0Width\n\tTEXT ") == "full width text"


def test_exact_and_near_copies_removed_with_their_original():
    docs = _docs()
    result = dedup_documents(docs, DedupConfig())
    removed = {r["source"]: r for r in result["removed"]}
    assert set(removed) == {"copy.txt", "near.txt"}
    assert removed["copy.txt"]["reason"] == "exact" and removed["near.txt"]["reason"] == "near"
    assert {r["duplicate_of"] for r in removed.values()} == {docs[0]["id"]}
    assert 0.8 <= removed["near.txt"]["jaccard"] < 1.0
    assert [d["id"] for d in result["kept"]] == [d["id"] for d in docs[:5]]
    assert result["stats"] == {"input": 7, "exact_removed": 1, "near_removed": 1, "kept": 5}


def test_dedup_is_deterministic_and_earlier_drop_wins():
    docs = _docs()
    shuffled = docs[::-1]  # the drop-2 copies come first in the input
    a, b = dedup_documents(docs, DedupConfig()), dedup_documents(shuffled, DedupConfig())
    assert a["removed"] == b["removed"]
    assert {d["id"] for d in a["kept"]} == {d["id"] for d in b["kept"]}
    assert [d["id"] for d in b["kept"]] == [d["id"] for d in shuffled if d["drop"] == "drop-1"]


def test_candidate_below_threshold_is_kept():
    base = _long_text("rivers and lakes").split()
    half = base[:150] + _long_text("bread baking").split()[:150]
    dups = find_duplicates([" ".join(base), " ".join(half)], threshold=0.8)
    assert dups == []


def test_strip_markup_keeps_what_a_reader_sees():
    rst = ".. _label:\n\n.. index:: single: x\n\n.. function:: f(x)\n   :noindex:\n\n   Use :func:`g`.\n"
    assert strip_markup(rst).split() == ["f(x)", "Use", "g."]


def test_real_rst_and_its_html_page_are_near_duplicates():
    sources = corpus.find_python_docs()
    assert sources is not None, "python3-doc is missing: run scripts/setup.sh (apt-get install python3-doc)"
    rst = make_document(
        "drop-0001", "tutorial/classes.rst", (sources / "tutorial/classes.rst.txt").read_text()
    )
    title, text = html_to_text((sources.parent / "tutorial/classes.html").read_text())
    page = make_document("drop-0002", "tutorial/classes.html", text, title)
    other = make_document(
        "drop-0001", "tutorial/errors.rst", (sources / "tutorial/errors.rst.txt").read_text()
    )
    result = dedup_documents([page, other, rst], DedupConfig())
    assert [(r["source"], r["duplicate_of"]) for r in result["removed"]] == [
        ("tutorial/classes.html", rst["id"])
    ]
