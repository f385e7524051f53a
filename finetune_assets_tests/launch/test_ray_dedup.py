"""Curation on Ray Data must keep exactly what the single-process path keeps, for the same reasons."""

import json
import random

from finetune_assets.config import DedupConfig
from finetune_assets.io import read_records, write_records_parquet
from finetune_assets.launch.ray_dedup import curate_on_ray, decide_from_edges
from finetune_assets.phases.data import curation
from finetune_assets.phases.data.corpus import make_document

VOCAB = [f"w{i}" for i in range(400)]


def _edit(words: list[str], rate: float, rng: random.Random) -> list[str]:
    out = list(words)
    for i in rng.sample(range(len(out)), k=max(1, int(len(out) * rate))):
        out[i] = rng.choice(VOCAB)
    return out


def _drops(tmp_path) -> dict:
    """Three drops: originals, copies at edit rates spread across the threshold, chains (a copy of a copy),
    exact copies of kept and of removed documents, short documents (quality) and one with an e-mail (PII)."""
    rng = random.Random(7)
    originals = [[rng.choice(VOCAB) for _ in range(250)] for _ in range(40)]
    drops: dict[str, list[dict]] = {"d1": [], "d2": [], "d3": []}
    for i, words in enumerate(originals):
        drops["d1"].append(make_document("d1", f"orig-{i:02d}.txt", " ".join(words)))
        copy = _edit(words, rng.uniform(0.002, 0.05), rng)  # J from ~0.97 to ~0.6
        drops["d2"].append(make_document("d2", f"copy-{i:02d}.txt", " ".join(copy)))
        if i % 3 == 0:  # a copy of the copy: near the copy, maybe not near the original
            drops["d3"].append(make_document("d3", f"chain-{i:02d}.txt", " ".join(_edit(copy, 0.02, rng))))
        if i % 4 == 0:  # exact copies (case and spacing only) of the original and of the copy
            drops["d3"].append(make_document("d3", f"exact-orig-{i:02d}.txt", " ".join(words).upper()))
            drops["d3"].append(make_document("d3", f"exact-copy-{i:02d}.txt", "  ".join(copy)))
    drops["d1"].append(make_document("d1", "short.txt", "too short"))
    drops["d2"].append(
        make_document("d2", "mail.txt", " ".join(originals[5][:200]) + " mail jane@corp-x.io now")
    )
    return {
        drop: write_records_parquet(docs, tmp_path / "raw" / drop / "documents.parquet")
        for drop, docs in drops.items()
    }


def _outcome(out) -> tuple:
    report = json.loads((out / curation.REPORT).read_text())
    removed = sorted((r["id"], r["reason"], r["duplicate_of"], r["jaccard"]) for r in report["removed"])
    kept = sorted(d["id"] for d in read_records(out / curation.DOCUMENTS))
    return kept, removed, report["stats"], report["pii_counts"]


def test_ray_data_curation_keeps_the_same_set_as_the_local_path(tmp_path, embedded_ray):
    drops = _drops(tmp_path)
    cfg = DedupConfig(num_perm=64, shuffle_partitions=3)
    local = curation.curate(drops, tmp_path / "local", cfg.model_copy(update={"distributed": "never"}))
    assert local["run"]["signed_on"] == "local"
    on_ray = curation.curate(
        drops, tmp_path / "ray", cfg.model_copy(update={"distributed": "always"}), distributed=curate_on_ray
    )
    assert on_ray["run"]["signed_on"] == "ray" and "on Ray Data" in on_ray["run"]["why"]
    kept, removed, stats, pii_counts = _outcome(tmp_path / "ray")
    assert (kept, removed, stats, pii_counts) == _outcome(tmp_path / "local")
    assert stats["near_removed"] >= 30 and stats["exact_removed"] >= 10 and stats["quality_removed"] == 1
    assert pii_counts["email"] == 1
    assert not (tmp_path / "ray" / curation.INDEX).exists(), "the Ray path writes no index"
    written = [(d["drop"], d["source"]) for d in read_records(tmp_path / "ray" / curation.DOCUMENTS)]
    assert written == sorted(written), "kept documents are written in (drop, source) order"
    again = curation.plan(tmp_path / "ray", drops, cfg)
    assert again[0] == "full", "without an index the next run curates from scratch"


def test_the_keep_rule_follows_a_chain_like_the_sequential_index():
    """a ~ b ~ c with a !~ c: b goes for a, so c is kept (its only similar document was removed); an exact
    copy of b goes as a near duplicate of a, one of a as an exact duplicate."""
    reps = [("1", "a"), ("2", "b"), ("3", "c")]
    edges = [{"lo_id": "a", "hi_id": "b", "jaccard": 0.9, "estimate": 0.9},
             {"lo_id": "b", "hi_id": "c", "jaccard": 0.85, "estimate": 0.8}]  # fmt: skip
    copies = [{"id": "b2", "order": "4", "rep": "b", "rep_order": "2"},
              {"id": "a2", "order": "5", "rep": "a", "rep_order": "1"}]  # fmt: skip
    found = {r["id"]: (r["reason"], r["duplicate_of"]) for r in decide_from_edges(reps, edges, copies)}
    assert found == {"b": ("near", "a"), "b2": ("near", "a"), "a2": ("exact", "a")}
