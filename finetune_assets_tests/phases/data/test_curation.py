"""dedup_corpus end to end (quality -> dedup -> PII), incremental over drops."""

import json
import random

from finetune_assets.config import DedupConfig
from finetune_assets.io import read_records, write_records_parquet
from finetune_assets.phases.data import curation
from finetune_assets.phases.data.corpus import make_document

WORDS = (
    "the river flows past old mills and quiet towns while engineers measure water levels each season to plan "
    "bridges dams canals locks ferries harbors floods droughts fishing boats travel trade markets weather"
).split()


def _prose(seed: str, n: int = 220) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < n:
        sentences.append(" ".join(rng.choice(WORDS) for _ in range(12)).capitalize() + ".")
    return " ".join(sentences)


def _drops(tmp_path) -> dict:
    base = {k: _prose(k) for k in "abcdef"}
    near = base["b"].split()
    near[7] = "lighthouse"
    raw = {
        "2026-01": [
            make_document("2026-01", "a.txt", base["a"] + " Contact jane.doe@acme-corp.io for access."),
            make_document("2026-01", "b.txt", base["b"]),
            make_document(
                "2026-01", "c.txt", base["a"] + " Contact jane.doe@acme-corp.io for access."
            ),  # exact
            make_document("2026-01", "short.txt", "Too short to teach anything."),  # quality: min_words
        ],
        "2026-02": [
            make_document("2026-02", "near-b.txt", " ".join(near)),  # near copy of an earlier drop's doc
            make_document("2026-02", "d.txt", base["d"] + " Server 93.184.216.34 answered."),
        ],
        "2026-03": [
            make_document("2026-03", "e.txt", base["e"]),
            make_document(
                "2026-03", "again-d.txt", base["d"] + " Server 93.184.216.34 answered."
            ),  # exact, across drops
        ],
    }
    paths = {}
    for drop, docs in raw.items():
        paths[drop] = write_records_parquet(docs, tmp_path / "raw" / drop / "documents.parquet")
    return paths


def _kept_sources(out) -> list[str]:
    return [d["source"] for d in read_records(out / curation.DOCUMENTS)]


def test_quality_dedup_and_pii_in_one_pass(tmp_path):
    drops = _drops(tmp_path)
    summary = curation.curate(drops, tmp_path / "out", DedupConfig(num_perm=64))
    assert _kept_sources(tmp_path / "out") == ["a.txt", "b.txt", "d.txt", "e.txt"]
    assert summary["stats"] == {
        "input": 8,
        "quality_removed": 1,
        "exact_removed": 2,
        "near_removed": 1,
        "pii_redacted": 4,  # redaction runs before dedup: the copies' matches count too
        "kept": 4,
        "oversized": 0,
        "semantic_removed": 0,
    }
    assert summary["quality_counts"]["min_words"] == 1
    assert summary["pii_counts"]["email"] == 2 and summary["pii_counts"]["ip_address"] == 2
    text = " ".join(d["text"] for d in read_records(tmp_path / "out" / curation.DOCUMENTS))
    assert "jane.doe@acme-corp.io" not in text and "[EMAIL]" in text and "[IP_ADDRESS]" in text
    clusters = json.loads((tmp_path / "out" / curation.CLUSTERS).read_text())
    assert {len(c["duplicates"]) for c in clusters} == {1}
    kept = read_records(tmp_path / "out" / curation.DOCUMENTS)
    assert curation.exact_duplicates(kept) == [] and curation.pii_left(kept, DedupConfig()) == []


def test_drops_one_by_one_equal_all_at_once_without_redoing_earlier_drops(tmp_path):
    drops = _drops(tmp_path)
    cfg = DedupConfig(num_perm=64)
    curation.curate(drops, tmp_path / "at_once", cfg)
    runs = []
    for n in range(1, 4):
        arrived = dict(sorted(drops.items())[:n])
        runs.append(curation.curate(arrived, tmp_path / "one_by_one", cfg)["run"])
    assert [r["mode"] for r in runs] == ["full", "incremental", "incremental"]
    assert [r["drops_curated"] for r in runs] == [["2026-01"], ["2026-02"], ["2026-03"]]
    assert runs[2]["documents_read"] == 2  # only the new drop was read
    for name in (curation.DOCUMENTS, curation.CLUSTERS):
        at_once, incremental = tmp_path / "at_once" / name, tmp_path / "one_by_one" / name
        if name == curation.DOCUMENTS:
            assert read_records(at_once) == read_records(incremental)
        else:
            assert json.loads(at_once.read_text()) == json.loads(incremental.read_text())
    a, b = (json.loads((tmp_path / d / curation.REPORT).read_text()) for d in ("at_once", "one_by_one"))
    assert a["stats"] == b["stats"] and a["removed"] == b["removed"]


def test_changed_settings_or_drops_recurate_everything(tmp_path):
    drops = _drops(tmp_path)
    cfg = DedupConfig(num_perm=64)
    curation.curate(drops, tmp_path / "out", cfg)
    assert curation.plan(tmp_path / "out", drops, cfg)[:2] == ("incremental", [])
    assert curation.plan(tmp_path / "out", drops, DedupConfig(num_perm=64, threshold=0.9))[0] == "full"
    changed = read_records(drops["2026-02"])[:1]
    write_records_parquet(changed, drops["2026-02"])
    mode, todo, why = curation.plan(tmp_path / "out", drops, cfg)
    assert mode == "full" and "2026-02" in why and len(todo) == 3
    earlier = {"2025-12": write_records_parquet(changed, tmp_path / "raw" / "2025-12" / "documents.parquet")}
    curation.curate(drops, tmp_path / "out", cfg)
    assert curation.plan(tmp_path / "out", {**drops, **earlier}, cfg)[0] == "full"


def test_corpus_problems_finds_planted_duplicates_and_pii():
    docs = [
        make_document("d", "1.txt", _prose("x") + " mail me: bob@contoso.net"),
        make_document("d", "2.txt", _prose("x").upper() + " MAIL ME: BOB@CONTOSO.NET"),
    ]
    assert curation.exact_duplicates(docs) == [{"id": docs[1]["id"], "duplicate_of": docs[0]["id"]}]
    assert {f["type"] for f in curation.pii_left(docs, DedupConfig())} == {"email"}


def test_copies_differing_only_in_pii_are_duplicates_after_redaction(tmp_path):
    text = _prose("y", 60)
    docs = [
        make_document("d", "1.txt", f"{text} Mail ann@contoso.net or call +1 415-555-0132."),
        make_document("d", "2.txt", f"{text} Mail bob@fabrikam.org or call +1 212-555-0199."),
    ]
    drops = {"d": write_records_parquet(docs, tmp_path / "raw" / "documents.parquet")}
    summary = curation.curate(drops, tmp_path / "out", DedupConfig(num_perm=64))
    assert summary["stats"]["exact_removed"] == 1 and summary["stats"]["kept"] == 1
    assert curation.exact_duplicates(read_records(tmp_path / "out" / curation.DOCUMENTS)) == []


def test_missing_report_means_a_full_run(tmp_path):
    drops = _drops(tmp_path)
    cfg = DedupConfig(num_perm=64)
    curation.curate(drops, tmp_path / "out", cfg)
    assert (
        curation.plan(tmp_path / "out", drops, cfg.model_copy(update={"ray_min_documents": 5}))[0]
        == "incremental"
    )
    (tmp_path / "out" / curation.REPORT).unlink()
    assert curation.plan(tmp_path / "out", drops, cfg)[0] == "full"


def test_a_drop_with_nothing_left_after_curation_is_an_error_that_writes_nothing(tmp_path):
    import pytest

    from finetune_assets.phases.data.corpus import EmptyCorpusError

    path = write_records_parquet(
        [make_document("2026-01", "short.txt", "Too short to teach anything.")],
        tmp_path / "raw" / "2026-01" / "documents.parquet",
    )
    with pytest.raises(EmptyCorpusError, match="dedup_corpus"):
        curation.curate({"2026-01": path}, tmp_path / "out", DedupConfig(num_perm=64))
    assert not (tmp_path / "out" / curation.DOCUMENTS).exists()


def test_the_summary_carries_the_duplicate_clusters_it_wrote(tmp_path):
    summary = curation.curate(_drops(tmp_path), tmp_path / "out", DedupConfig(num_perm=64))
    assert summary["clusters"] == json.loads((tmp_path / "out" / curation.CLUSTERS).read_text())
    assert {d["reason"] for c in summary["clusters"] for d in c["duplicates"]} == {"exact", "near"}


def test_documents_over_the_size_cap_are_set_aside_with_the_reason(tmp_path):
    drops = _drops(tmp_path)
    long_doc = make_document("2026-04", "long.txt", _prose("long", 3_000))
    drops["2026-04"] = write_records_parquet([long_doc], tmp_path / "raw" / "2026-04" / "documents.parquet")
    summary = curation.curate(drops, tmp_path / "out", DedupConfig(max_document_chars=5_000))
    report = json.loads((tmp_path / "out" / curation.REPORT).read_text())
    assert [o["source"] for o in report["oversized"]] == ["long.txt"]
    assert "dedup.max_document_chars" in report["oversized"][0]["reason"]
    assert summary["stats"]["oversized"] == 1 and summary["stats"]["input"] == 9, "every document counted"
    assert "long.txt" not in _kept_sources(tmp_path / "out")
    generous = curation.curate(drops, tmp_path / "out2", DedupConfig())
    assert generous["stats"]["oversized"] == 0 and "long.txt" in _kept_sources(tmp_path / "out2")


def test_a_full_curation_goes_to_ray_data_by_size_or_by_config(tmp_path):
    drops = _drops(tmp_path)  # 8 documents
    calls = []

    def distributed(drops, out, cfg):
        calls.append(out)
        return curation.curate(drops, out, cfg.model_copy(update={"distributed": "never"}))

    small = DedupConfig(distributed_min_documents=9)
    assert curation.goes_distributed(drops, small) == (False, "8 documents < dedup.distributed_min_documents")
    curation.curate(drops, tmp_path / "a", small, distributed=distributed)
    assert calls == [], "below the size the local path runs"
    assert curation.goes_distributed(drops, DedupConfig(distributed_min_documents=8))[0]
    assert curation.goes_distributed(drops, DedupConfig(distributed="always"))[0]
    assert not curation.goes_distributed(
        drops, DedupConfig(distributed="never", distributed_min_documents=1)
    )[0]
    semantic = DedupConfig(distributed="always", semantic={"enabled": True})
    assert curation.goes_distributed(drops, semantic) == (
        False,
        "dedup.semantic is enabled: the semantic stage runs on the local path",
    )
    summary = curation.curate(
        drops, tmp_path / "b", DedupConfig(distributed="always"), distributed=distributed
    )
    assert calls == [tmp_path / "b"] and "on Ray Data: dedup.distributed is always" in summary["run"]["why"]
    assert (tmp_path / "b" / curation.STATE).is_file(), "the state is written after the distributed run"
