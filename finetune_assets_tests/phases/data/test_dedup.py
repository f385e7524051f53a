"""dedup phase: exact and MinHash near-duplicate removal."""

import json
import random

import numpy as np

from finetune_assets.config import DedupConfig
from finetune_assets.phases.data import demo_seed
from finetune_assets.phases.data.corpus import make_document
from finetune_assets.phases.data.dedup import dedup_documents, find_duplicates, normalize, strip_markup
from finetune_assets.phases.text.html import html_to_text

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
    sources = demo_seed.find_python_docs()
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


def test_signer_is_datasketch_minhash_of_the_same_shingle_hashes():
    from datasketch import MinHash

    from finetune_assets.phases.data.dedup import Signer

    texts = [_long_text(t) for t in TOPICS] + ["", "two words"]
    signer = Signer(num_perm=64, shingle_words=5, chunk_rows=100)  # small chunks: several batches
    signatures = signer.signatures(texts)
    for text, signature in zip(texts, signatures, strict=True):
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(signer.shingle_hashes(text).tolist())
        assert (reference.hashvalues == signature).all()


def test_word_streams_and_batched_hashing_change_no_value():
    """A chunk of documents is hashed as one byte array: every stream, exact key, word hash and signature
    must equal the plain per-document computation (Horner's rule over each word's bytes)."""
    from datasketch import MinHash

    from finetune_assets.phases.data.dedup import (
        _MIX,
        _POLY,
        _WORD,
        Signer,
        doc_features,
        exact_key,
        word_stream,
    )

    def horner(word: bytes) -> int:
        h = 0
        for byte in word:
            h = (h * _POLY + byte) % 2**64
        h ^= h >> 33
        h = (h * int(_MIX)) % 2**64
        return h ^ (h >> 29)

    texts = [_long_text(t) for t in TOPICS] + [
        "Ünïcode wörds, the ﬁ ligature and ASCII words " * 30,
        "",
        "two words",
    ]
    streams = [doc_features(t)[1] for t in texts]
    for text in texts:
        assert word_stream(text) == " ".join(_WORD.findall(normalize(text))).encode()
        assert doc_features(text)[0] == exact_key(text)
    signer = Signer(num_perm=64, shingle_words=5, chunk_rows=2_000)  # several long documents a chunk
    for stream, hashes in zip(streams, signer.word_hashes(streams), strict=True):
        assert hashes.tolist() == [horner(w) for w in stream.split()]
    sets: list = []
    signatures = signer.signatures_of_streams(streams, sets)
    for text, stream, signature, shingle_set in zip(texts, streams, signatures, sets, strict=True):
        alone = Signer(num_perm=64, shingle_words=5)
        assert (alone.signatures_of_streams([stream])[0] == signature).all()
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(alone.shingle_hashes(text).tolist())
        assert (reference.hashvalues == signature).all()
        assert (shingle_set == np.unique(alone.shingle_hashes(text))).all()


def _drops() -> list[list[dict]]:
    """Three drops with copies inside a drop, across drops, and a near copy of a near copy."""
    texts = {t: _long_text(t) for t in TOPICS}
    first = [make_document("d1", f"{i}.txt", texts[t]) for i, t in enumerate(TOPICS[:3])]
    first.append(make_document("d1", "z-copy.txt", texts[TOPICS[0]] + " !"))
    words = texts[TOPICS[1]].split()
    words[5] = "EDITED"
    second = [
        make_document("d2", "near.txt", " ".join(words)),
        make_document("d2", "new.txt", texts[TOPICS[3]]),
    ]
    third = [
        make_document("d3", "again.txt", texts[TOPICS[3]]),
        make_document("d3", "last.txt", texts[TOPICS[4]]),
    ]
    return [first, second, third]


def test_incremental_drops_give_the_same_corpus_as_all_at_once(tmp_path):
    from finetune_assets.phases.data.dedup import DedupIndex

    cfg = DedupConfig(num_perm=64)
    drops = _drops()
    at_once = dedup_documents([d for drop in drops for d in drop], cfg)
    kept, removed = [], []
    for number, drop in enumerate(drops):
        index = DedupIndex.load(tmp_path / "index", cfg) if number else DedupIndex(cfg)
        assert index is not None and len(index) == len(kept)  # nothing recomputed: the saved index is reused
        result = dedup_documents(drop, cfg, index=index)
        index.save(tmp_path / "index")
        kept += result["kept"]
        removed += result["removed"]
    assert [d["id"] for d in kept] == [d["id"] for d in at_once["kept"]]
    assert removed == at_once["removed"]
    assert {r["source"]: r["reason"] for r in removed} == {
        "z-copy.txt": "exact",
        "near.txt": "near",
        "again.txt": "exact",
    }


def test_saved_index_with_other_parameters_is_not_reused(tmp_path):
    from finetune_assets.phases.data.dedup import DedupIndex

    index = DedupIndex(DedupConfig(num_perm=64))
    dedup_documents(_drops()[0], index.cfg, index=index)
    index.save(tmp_path / "index")
    assert len(DedupIndex.load(tmp_path / "index", DedupConfig(num_perm=64))) == 3
    assert DedupIndex.load(tmp_path / "index", DedupConfig(num_perm=64, threshold=0.7)) is None
    assert DedupIndex.load(tmp_path / "missing", DedupConfig()) is None


def test_clusters_show_what_was_kept_for_what_was_dropped():
    result = dedup_documents(_docs(), DedupConfig())
    (cluster,) = result["clusters"]
    assert cluster["kept"] == _docs()[0]["id"]
    assert {d["reason"] for d in cluster["duplicates"]} == {"exact", "near"}


def test_explicit_bands_and_rows_drive_the_lsh():
    import pytest

    from finetune_assets.config import ConfigError
    from finetune_assets.phases.data.dedup import DedupIndex
    from finetune_assets.recipe import validate_profile

    assert DedupIndex(DedupConfig(num_perm=64, bands=16, rows=4)).lsh.bands == 16
    # Two bands of 32 rows: a pair at Jaccard 0.9 collides with probability 1-(1-0.9**32)**2 = 7%; this one
    # does not, so the near copy survives (the default banding, tuned for recall, catches it above).
    strict = dedup_documents(_docs(), DedupConfig(num_perm=64, bands=2, rows=32))
    assert {r["reason"] for r in strict["removed"]} == {"exact"}
    with pytest.raises(ConfigError, match="bands"):
        validate_profile({"name": "x", "dedup": {"num_perm": 64, "bands": 20, "rows": 4}})
    with pytest.raises(ConfigError, match="together"):
        validate_profile({"name": "x", "dedup": {"bands": 20}})


def test_repeated_ids_are_a_clear_error():
    import pytest

    docs = _docs()
    docs[1] = {**docs[1], "id": docs[0]["id"]}
    with pytest.raises(ValueError, match="unique"):
        dedup_documents(docs, DedupConfig())


def test_dedup_inputs_with_the_same_names_keep_distinct_ids(tmp_path):
    from finetune_assets.phases.data.dedup import read_dedup_inputs

    for folder, topic in (("a", TOPICS[0]), ("b", TOPICS[1])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "data.jsonl").write_text(json.dumps({"text": _long_text(topic)}) + "\n")
    for folder, topic in (("f1", TOPICS[2]), ("f2", TOPICS[3])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "README.txt").write_text(_long_text(topic))
    inputs = [tmp_path / name for name in ("a/data.jsonl", "b/data.jsonl", "f1", "f2")]
    docs, problems = read_dedup_inputs(inputs)
    assert [d["id"] for d in docs] == ["a/data.jsonl:1", "b/data.jsonl:1", "f1/README.txt", "f2/README.txt"]
    assert problems == []


def test_dedup_inputs_set_aside_one_bad_line_and_keep_line_separators(tmp_path):
    from finetune_assets.phases.data.dedup import read_dedup_inputs

    text = _long_text(TOPICS[4]) + "\u2028second paragraph"
    path = tmp_path / "in.jsonl"
    path.write_bytes(
        json.dumps({"text": text}, ensure_ascii=False).encode() + b"\n" + b'{"text": "bad \xff byte"}\n'
    )
    docs, problems = read_dedup_inputs([path])
    assert [d["text"] for d in docs] == [text]
    assert [(p["line"], "not UTF-8" in p["reason"]) for p in problems] == [(2, True)]


def _edited(words: list[str], rate: float, rng) -> str:
    return " ".join(f"edit{rng.randrange(10**6)}" if rng.random() < rate else w for w in words)


def test_near_the_threshold_the_exact_jaccard_decides_not_the_estimate():
    """Pairs edited to sit around J = 0.8: with 64 permutations the estimate falls on the wrong side of the
    threshold for some of them; every decision still follows the exact shingle Jaccard."""
    import random

    import numpy as np

    from finetune_assets.phases.data.dedup import Signer
    from finetune_assets.phases.data.dedup_index import exact_jaccard

    rng = random.Random(3)
    vocabulary = [f"w{i}" for i in range(5000)]
    cfg = DedupConfig(num_perm=64, threshold=0.8)
    signer = Signer(cfg.num_perm, cfg.shingle_words)
    disagreements = 0
    for _ in range(60):
        words = rng.choices(vocabulary, k=400)
        pair = [" ".join(words), _edited(words, rng.uniform(0.02, 0.06), rng)]
        [a, b] = [np.unique(signer.shingle_hashes(t)) for t in pair]
        exact = exact_jaccard(a, b)
        sig = signer.signatures(pair)
        estimate = float(np.count_nonzero(sig[0] == sig[1])) / cfg.num_perm
        disagreements += (estimate >= 0.8) != (exact >= 0.8)
        found = find_duplicates(pair, num_perm=cfg.num_perm, threshold=cfg.threshold)
        assert bool(found) == (exact >= 0.8), (exact, estimate, found)
        if found:
            assert found[0]["jaccard"] == round(exact, 4) and found[0]["estimate"] == round(estimate, 4)
    assert disagreements >= 3  # the estimate alone would have decided these wrongly


def test_a_saved_index_verifies_later_drops_against_memory_mapped_shingles(tmp_path):
    import numpy as np

    from finetune_assets.phases.data.dedup import DedupIndex

    index = DedupIndex(DedupConfig(num_perm=64))
    dedup_documents(_drops()[0], index.cfg, index=index)
    index.save(tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "index.json", "shingle_offsets.npy", "shingles.npy", "signatures.npy"
    ]  # fmt: skip
    loaded = DedupIndex.load(tmp_path / "index", index.cfg)
    assert isinstance(loaded.shingles[0], np.memmap) and len(loaded.shingles) == len(loaded)
    assert [loaded.shingles[i].tolist() for i in range(len(loaded))] == [
        index.shingles[i].tolist() for i in range(len(index))
    ]
    (tmp_path / "index" / "shingles.npy").unlink()  # an index from before exact verification: recomputed
    assert DedupIndex.load(tmp_path / "index", index.cfg) is None


def test_band_index_proposes_what_datasketch_lsh_proposes():
    from datasketch import LeanMinHash, MinHashLSH

    from finetune_assets.phases.data.dedup_index import BandIndex

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**32, size=(60, 64), dtype=np.uint64).astype(np.uint32)
    copies = base[rng.integers(0, 60, size=60)].copy()
    copies[:, rng.integers(0, 64, size=(60, 12))] = 7  # share some bands with their base, not all
    signatures = np.concatenate([base, copies])
    ours, theirs = BandIndex(bands=16, rows=4), MinHashLSH(num_perm=64, params=(16, 4))
    for i, sig in enumerate(signatures):
        sketch = LeanMinHash(seed=1, hashvalues=sig, scheme="affine32")
        assert ours.query(sig) == set(theirs.query(sketch))
        ours.insert(i, sig)
        theirs.insert(i, sketch)
    assert any(ours.query(sig) for sig in copies), "the set has collisions to compare"
