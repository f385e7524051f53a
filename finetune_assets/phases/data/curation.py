"""dedup_corpus end to end: quality filters -> exact + near dedup -> PII redaction, incremental over drops.

Each drop's raw documents longer than ``dedup.max_document_chars`` are set aside (reported under "oversized"
in removed.json), the others go through the Gopher/C4 quality filters (phases.data.quality), then PII redaction
(phases.data.pii), then exact and MinHash LSH dedup against everything kept so far (phases.data.dedup.DedupIndex).
Dedup sees the redacted text, the text that is kept: two copies that differ only in an e-mail address become
exact duplicates and one goes, so no exact duplicate can appear after curation (a blocking check).

Incremental: the output folder keeps the dedup index (signatures of every kept document) and a state file
naming the drops already curated with the content hash of their raw documents. A new drop that sorts after
all of them is curated alone, against the saved index, and appended: earlier drops are neither re-read nor
re-signed. Anything else (first run, changed settings, a drop changed or removed, a new drop sorting before
a curated one) curates every drop from scratch. Both give the same corpus, because decisions are taken in
(drop, source) order either way (test_curation checks it).
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from finetune_assets.config import DedupConfig
from finetune_assets.io import content_hash, read_records, write_json, write_records_parquet
from finetune_assets.phases.data import pii, quality
from finetune_assets.phases.data.corpus import require_documents
from finetune_assets.phases.data.dedup import (
    DedupIndex,
    Sign,
    clusters_of,
    dedup_documents,
    exact_key,
    too_long,
)

DOCUMENTS = "documents.parquet"

REPORT = "removed.json"  # quality and dedup removals, PII counts, stats

CLUSTERS = "clusters.json"

STATE = "state.json"

INDEX = "index"

SignFor = Callable[[int], Sign | None]  # number of documents to sign -> signer (None = local)


def settings_hash(cfg: DedupConfig) -> str:
    """Hash of the settings that change the curated corpus (not where signatures run, nor incrementality)."""
    relevant = cfg.model_dump(exclude={"ray_min_documents", "incremental"})
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def plan(out_dir: Path, drops: dict[str, Path], cfg: DedupConfig) -> tuple[str, list[str], str]:
    """("incremental"|"full", the drops to curate now, why)."""
    state_path = Path(out_dir) / STATE
    everything = sorted(drops)
    if not cfg.incremental:
        return "full", everything, "dedup.incremental is off"
    if not all((Path(out_dir) / name).is_file() for name in (STATE, DOCUMENTS, REPORT)):
        return "full", everything, "no earlier curated corpus"
    state = json.loads(state_path.read_text())
    if state.get("settings") != settings_hash(cfg):
        return "full", everything, "dedup/quality/PII settings changed"
    done: dict[str, str] = state.get("drops", {})
    for drop, digest in done.items():
        if drop not in drops:
            return "full", everything, f"drop '{drop}' is no longer there"
        if content_hash(drops[drop]) != digest:
            return "full", everything, f"drop '{drop}' changed since it was curated"
    new = [d for d in everything if d not in done]
    if new and done and new[0] < max(done):
        return "full", everything, f"new drop '{new[0]}' sorts before curated drop '{max(done)}'"
    if DedupIndex.load(Path(out_dir) / INDEX, cfg) is None:
        return "full", everything, "the saved dedup index is missing or stale"
    return "incremental", new, f"{len(done)} drops already curated"


def curate(drops: dict[str, Path], out_dir: Path, cfg: DedupConfig, sign_for: SignFor | None = None) -> dict:
    """Curate ``drops`` ({drop: its raw documents.parquet}) into ``out_dir``; returns the summary
    (mode, why, drops curated now, stats, quality counts, PII counts) that is also in removed.json, and the
    duplicate clusters of clusters.json. Raises EmptyCorpusError, writing nothing, when no document is left."""
    out_dir = Path(out_dir)
    mode, todo, why = plan(out_dir, drops, cfg)
    previous = _previous(out_dir) if mode == "incremental" else None
    index = DedupIndex.load(out_dir / INDEX, cfg) if previous else DedupIndex(cfg)

    docs = [doc for drop in todo for doc in read_records(drops[drop])]
    oversized = [
        {
            "id": d["id"],
            "source": d["source"],
            "drop": d["drop"],
            "reason": too_long(len(d["text"]), cfg.max_document_chars),
        }
        for d in docs
        if len(d["text"]) > cfg.max_document_chars
    ]
    if oversized:
        too_big = {o["id"] for o in oversized}
        docs = [d for d in docs if d["id"] not in too_big]
    filtered = quality.filter_documents(docs, cfg.quality)
    redacted = pii.redact_documents(filtered["kept"], cfg.pii)
    sign = (sign_for or (lambda n: None))(len(redacted["documents"]))
    deduped = dedup_documents(redacted["documents"], cfg, index=index, sign=sign)

    report = previous or {"removed": [], "quality_removed": [], "pii_counts": dict.fromkeys(pii.PII_TYPES, 0)}
    report.setdefault("oversized", [])
    report["oversized"] += oversized
    kept = (read_records(out_dir / DOCUMENTS) if previous else []) + deduped["kept"]
    require_documents(kept, "dedup_corpus (after curation)")
    report["removed"] += deduped["removed"]
    report["quality_removed"] += filtered["removed"]
    for kind, n in redacted["counts"].items():
        report["pii_counts"][kind] = report["pii_counts"].get(kind, 0) + n
    quality_counts = {f.name: 0 for f in quality.FILTERS}
    for r in report["quality_removed"]:
        quality_counts[r["filter"]] += 1
    report["stats"] = {
        "input": len(kept)
        + len(report["removed"])
        + len(report["quality_removed"])
        + len(report["oversized"]),
        "oversized": len(report["oversized"]),
        "quality_removed": len(report["quality_removed"]),
        "exact_removed": sum(r["reason"] == "exact" for r in report["removed"]),
        "near_removed": sum(r["reason"] == "near" for r in report["removed"]),
        "pii_redacted": sum(report["pii_counts"].values()),
        "kept": len(kept),
    }
    report["quality_counts"] = quality_counts
    report["run"] = {
        "mode": mode,
        "why": why,
        "drops_curated": todo,
        "documents_read": len(docs),
        "signed_on": "local" if sign is None else "ray",
    }

    # The index and documents first, the state last: a crash in between leaves a state that does not
    # match, so the next run starts from scratch instead of trusting a half-written corpus.
    (out_dir / STATE).unlink(missing_ok=True)
    index.save(out_dir / INDEX)
    write_records_parquet(kept, out_dir / DOCUMENTS)
    write_json(report, out_dir / REPORT)
    clusters = clusters_of(report["removed"])
    write_json(clusters, out_dir / CLUSTERS)
    digests = {drop: content_hash(path) for drop, path in drops.items()}
    write_json({"settings": settings_hash(cfg), "drops": digests}, out_dir / STATE)
    return {**{k: report[k] for k in ("stats", "quality_counts", "pii_counts", "run")}, "clusters": clusters}


def _previous(out_dir: Path) -> dict | None:
    path = out_dir / REPORT
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    return {k: report.get(k, []) for k in ("removed", "quality_removed", "pii_counts", "oversized")}


def exact_duplicates(docs: list[dict]) -> list[dict]:
    """[{id, duplicate_of}] for every document whose normalized text equals an earlier one's."""
    seen: dict[str, str] = {}
    duplicates = []
    for doc in docs:
        key = exact_key(doc["text"])
        if key in seen:
            duplicates.append({"id": doc["id"], "duplicate_of": seen[key]})
        else:
            seen[key] = doc["id"]
    return duplicates


def pii_left(docs: list[dict], cfg: DedupConfig) -> list[dict]:
    """[{id, type}] for every PII match of the configured types still in the documents."""
    if not cfg.pii.enabled:
        return []
    return [{"id": d["id"], "type": m["type"]} for d in docs for m in pii.find_pii(d["text"], cfg.pii.types)]
