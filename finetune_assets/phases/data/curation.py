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
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq

from finetune_assets.config import DedupConfig
from finetune_assets.io import content_hash, read_records, write_json, write_records_parquet
from finetune_assets.phases.data import pii, quality, semdedup
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

EMBEDDINGS = "embeddings"  # the semantic stage's embedding cache (by content hash)

SignFor = Callable[[int], Sign | None]  # number of documents to sign -> signer (None = local)

# (drops, out_dir, cfg) -> summary: the whole curation elsewhere (launch.ray_dedup.curate_on_ray)
Distributed = Callable[[dict[str, Path], Path, DedupConfig], dict]


def goes_distributed(drops: dict[str, Path], cfg: DedupConfig) -> tuple[bool, str]:
    """Whether a full curation of ``drops`` runs on Ray Data (dedup.distributed), and why. "auto" goes when
    the drops hold at least dedup.distributed_min_documents rows (read from the Parquet footers only)."""
    if cfg.semantic.enabled:
        return False, "dedup.semantic is enabled: the semantic stage runs on the local path"
    if cfg.distributed != "auto":
        return cfg.distributed == "always", f"dedup.distributed is {cfg.distributed}"
    rows = sum(pq.ParquetFile(path).metadata.num_rows for path in drops.values())
    big = rows >= cfg.distributed_min_documents
    return big, f"{rows} documents {'>=' if big else '<'} dedup.distributed_min_documents"


def settings_hash(cfg: DedupConfig) -> str:
    """Hash of the settings that change the curated corpus (not where signatures run, nor incrementality)."""
    where = {
        "ray_min_documents",
        "incremental",
        "distributed",
        "distributed_min_documents",
        "shuffle_partitions",
    }
    relevant = cfg.model_dump(exclude=where)
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


def curate(
    drops: dict[str, Path],
    out_dir: Path,
    cfg: DedupConfig,
    sign_for: SignFor | None = None,
    distributed: Distributed | None = None,
) -> dict:
    """Curate ``drops`` ({drop: its raw documents.parquet}) into ``out_dir``; returns the summary
    (mode, why, drops curated now, stats, quality counts, PII counts) that is also in removed.json, and the
    duplicate clusters of clusters.json. Raises EmptyCorpusError, writing nothing, when no document is left.
    A full curation goes to ``distributed`` when given and ``goes_distributed`` says so (same corpus)."""
    out_dir = Path(out_dir)
    mode, todo, why = plan(out_dir, drops, cfg)
    if mode == "full" and distributed is not None and goes_distributed(drops, cfg)[0]:
        return _curate_distributed(drops, out_dir, cfg, distributed, why)
    previous = _previous(out_dir) if mode == "incremental" else None
    index = DedupIndex.load(out_dir / INDEX, cfg) if previous else DedupIndex(cfg)

    docs = [doc for drop in todo for doc in read_records(drops[drop])]
    documents_read = len(docs)
    docs, oversized = set_aside_oversized(docs, cfg.max_document_chars)
    filtered = quality.filter_documents(docs, cfg.quality)
    redacted = pii.redact_documents(filtered["kept"], cfg.pii)
    sign = (sign_for or (lambda n: None))(len(redacted["documents"]))
    deduped = dedup_documents(redacted["documents"], cfg, index=index, sign=sign)

    report = previous or {"removed": [], "quality_removed": [], "pii_counts": dict.fromkeys(pii.PII_TYPES, 0)}
    report.setdefault("oversized", [])
    report["oversized"] += oversized
    earlier = read_records(out_dir / DOCUMENTS) if previous else []
    new_kept = deduped["kept"]
    report["removed"] += deduped["removed"]
    if cfg.semantic.enabled:
        new_kept, semantic_removed = _semantic(earlier, new_kept, out_dir, cfg)
        report["removed"] += semantic_removed
    kept = earlier + new_kept
    require_documents(kept, "dedup_corpus (after curation)")
    report["quality_removed"] += filtered["removed"]
    for kind, n in redacted["counts"].items():
        report["pii_counts"][kind] = report["pii_counts"].get(kind, 0) + n
    summarize(report, len(kept))
    report["run"] = {
        "mode": mode,
        "why": why,
        "drops_curated": todo,
        "documents_read": documents_read,
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
    _write_state(drops, out_dir, cfg)
    return {**{k: report[k] for k in ("stats", "quality_counts", "pii_counts", "run")}, "clusters": clusters}


def _write_state(drops: dict[str, Path], out_dir: Path, cfg: DedupConfig) -> None:
    digests = {drop: content_hash(path) for drop, path in drops.items()}
    write_json({"settings": settings_hash(cfg), "drops": digests}, out_dir / STATE)


def _curate_distributed(
    drops: dict[str, Path], out_dir: Path, cfg: DedupConfig, distributed, why: str
) -> dict:
    """The Ray Data path: it writes documents, removed.json and clusters.json; no index, so the next run is
    a full one again (an index of an earlier local run is removed: it no longer matches the documents)."""
    (out_dir / STATE).unlink(missing_ok=True)
    shutil.rmtree(out_dir / INDEX, ignore_errors=True)
    summary = distributed(drops, out_dir, cfg)
    summary["run"]["why"] = f"{why}; on Ray Data: {goes_distributed(drops, cfg)[1]}"
    _write_state(drops, out_dir, cfg)
    return summary


def _semantic(
    earlier: list[dict], new: list[dict], out_dir: Path, cfg: DedupConfig
) -> tuple[list[dict], list]:
    """The semantic stage over what near dedup kept: new documents (in (drop, source) order) against the
    earlier drops' kept documents and each other. Embeddings are cached in out_dir/embeddings."""
    ordered = sorted(new, key=lambda d: (d["drop"], d["source"]))
    docs = earlier + ordered
    cache = semdedup.EmbeddingCache(out_dir / EMBEDDINGS)
    vectors = semdedup.embed_documents([d["text"] for d in docs], cfg.semantic, cache)
    cache.save()
    found = semdedup.find_semantic_duplicates(
        [d["id"] for d in docs], vectors, cfg.semantic, decided=len(earlier)
    )
    by_id = {d["id"]: d for d in ordered}
    removed = [{"id": f["id"], "source": by_id[f["id"]]["source"], "drop": by_id[f["id"]]["drop"],
                "reason": "semantic", "duplicate_of": f["duplicate_of"], "jaccard": None, "cosine": f["cosine"]}
               for f in found]  # fmt: skip
    gone = {f["id"] for f in found}
    return [d for d in new if d["id"] not in gone], removed


def set_aside_oversized(docs: list[dict], max_chars: int) -> tuple[list[dict], list[dict]]:
    """(documents within the size cap, {id, source, drop, reason} for each longer one); both paths use it."""
    within, oversized = [], []
    for doc in docs:
        if len(doc["text"]) > max_chars:
            reason = too_long(len(doc["text"]), max_chars)
            oversized.append(
                {"id": doc["id"], "source": doc["source"], "drop": doc["drop"], "reason": reason}
            )
        else:
            within.append(doc)
    return within, oversized


def summarize(report: dict, kept: int) -> dict:
    """Add stats and quality_counts to a report of removals (both paths, local and Ray Data, use this)."""
    quality_counts = {f.name: 0 for f in quality.FILTERS}
    for r in report["quality_removed"]:
        quality_counts[r["filter"]] += 1
    removed, quality_removed, oversized = report["removed"], report["quality_removed"], report["oversized"]
    report["stats"] = {
        "input": kept + len(removed) + len(quality_removed) + len(oversized),
        "oversized": len(oversized),
        "quality_removed": len(quality_removed),
        "exact_removed": sum(r["reason"] == "exact" for r in removed),
        "near_removed": sum(r["reason"] == "near" for r in removed),
        "semantic_removed": sum(r["reason"] == "semantic" for r in removed),
        "pii_redacted": sum(report["pii_counts"].values()),
        "kept": kept,
    }
    report["quality_counts"] = quality_counts
    return report


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
