"""dedup_corpus on Ray Data: the whole curation (size cap, quality, PII, exact + near dedup) spread over a
cluster, with the driver holding only counts.

The single-process path (phases.data.curation) reads every document into one process. Here:
1. the workers read the drops' raw Parquet themselves and, a batch at a time, apply the size cap, the
   quality filters and PII redaction, and compute each document's exact key, MinHash signature and sorted
   shingle hashes (the same ``Signer`` as the local path, so the same values);
2. exact pass: documents grouped by exact key (hash-partitioned); the earliest in (drop, source) order is
   the key's representative, the others its copies;
3. LSH banding as Ray Data operations: one row per (representative, band) keyed by a 64-bit hash of the
   band, grouped by that key; each bucket holding two or more proposes its pairs;
4. verification on the workers: each pair joined with both documents' signatures and shingle sets, dropped
   when the MinHash estimate is more than ``dedup.prefilter_margin`` below the threshold, kept as an edge
   when the exact Jaccard reaches it;
5. the keep rule, in one Ray task over the edges only (near-duplicate pairs, not documents): documents in
   (drop, source) order, a document is a near duplicate of its most similar earlier kept neighbour (ties to
   the earlier). That is exactly what the single-process index decides, so the kept set is the same (a
   test checks it). A copy of a kept representative is an exact duplicate of it; a copy of a removed one
   is decided like it, against the kept documents before the copy;
6. the kept documents are written by a Ray task; the report (removals, counts, clusters) likewise.

The driver sees row counts and the summary only. Partitions (``dedup.shuffle_partitions``, default twice
the cluster's CPUs) bound what one worker holds at a time. The run writes no persisted index: the next drop
is curated from scratch again (on this path when it is still large), which suits corpora that size.
"""

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from finetune_assets.config import DedupConfig
from finetune_assets.io import write_json
from finetune_assets.launch.ray_cluster import ensure_ray
from finetune_assets.phases.data import pii, quality
from finetune_assets.phases.data.corpus import require_documents
from finetune_assets.phases.data.curation import CLUSTERS, DOCUMENTS, REPORT, set_aside_oversized, summarize
from finetune_assets.phases.data.dedup import (
    Signer,
    clusters_of,
    doc_features,
    exact_jaccard,
    make_lsh,
)

SEP = "\x1f"  # order key = drop SEP source: sorts as (drop, source) does


def order_key(doc: dict) -> str:
    return f"{doc['drop']}{SEP}{doc['source']}"


def _part(key: str, partitions: int) -> int:
    return int(key[:8], 16) % partitions


class _Prepare:
    """Raw document rows -> one row per document that passes (features + the redacted record as JSON) and
    one "side" row per removal and per batch's PII counts."""

    def __init__(self, cfg_json: str, partitions: int):
        self.cfg = DedupConfig.model_validate_json(cfg_json)
        self.signer = Signer(self.cfg.num_perm, self.cfg.shingle_words)
        self.partitions = partitions

    def __call__(self, batch: pa.Table) -> pa.Table:
        cfg = self.cfg
        docs, oversized = set_aside_oversized(batch.to_pylist(), cfg.max_document_chars)
        rows = [_side("oversized", o) for o in oversized]
        filtered = quality.filter_documents(docs, cfg.quality)
        rows += [_side("quality", r) for r in filtered["removed"]]
        redacted = pii.redact_documents(filtered["kept"], cfg.pii)
        rows.append(_side("pii", redacted["counts"]))
        features = [doc_features(d["text"]) for d in redacted["documents"]]
        shingle_sets: list = []
        signatures = self.signer.signatures_of_streams([stream for _, stream in features], shingle_sets)
        for doc, (key, _), signature, shingles in zip(redacted["documents"], features, signatures, shingle_sets,
                                                      strict=True):  # fmt: skip
            rows.append({"kind": "doc", "id": doc["id"], "order": order_key(doc), "key": key,
                         "part": _part(key, self.partitions), "sig": signature.tolist(),
                         "shingles": shingles.tolist(), "record": json.dumps(doc, default=str)})  # fmt: skip
        return pa.Table.from_pylist(rows, schema=FEATURES)


FEATURES = pa.schema([("kind", pa.string()), ("id", pa.string()), ("order", pa.string()), ("key", pa.string()),
                      ("part", pa.int64()), ("sig", pa.list_(pa.uint32())), ("shingles", pa.list_(pa.uint32())),
                      ("record", pa.string())])  # fmt: skip


def _side(kind: str, record: dict) -> dict:
    return {"kind": kind, "id": None, "order": None, "key": None, "part": 0, "sig": [], "shingles": [],
            "record": json.dumps(record)}  # fmt: skip


def _representatives(group: pa.Table) -> pa.Table:
    """One hash partition of documents: mark each key's earliest document (by order) as its representative;
    copies keep only what the keep rule needs (id, order, their representative)."""
    rows = sorted(group.to_pylist(), key=lambda r: (r["key"], r["order"]))
    out, rep = [], None
    for row in rows:
        if rep is None or row["key"] != rep["key"]:
            rep = row
            out.append({**row, "rep": row["id"], "rep_order": row["order"]})
        else:
            out.append(
                {**row, "sig": [], "shingles": [], "record": "", "rep": rep["id"], "rep_order": rep["order"]}
            )
    return pa.Table.from_pylist(out, schema=FEATURES.append(pa.field("rep", pa.string())).append(
        pa.field("rep_order", pa.string())))  # fmt: skip


class _Bands:
    """Representatives -> one row per band: {bucket: 64-bit hash of (band, its values), bpart, id, order}."""

    def __init__(self, bands: int, rows: int, partitions: int):
        self.bands, self.rows, self.partitions = bands, rows, partitions

    def __call__(self, batch: dict) -> dict:
        sig = np.stack(batch["sig"]).astype(np.uint64) if len(batch["sig"]) else np.empty((0, 1), np.uint64)
        buckets = []
        with np.errstate(over="ignore"):
            for band in range(self.bands):
                h = np.full(len(sig), np.uint64(band + 1) * np.uint64(0x9E3779B97F4A7C15))
                for col in range(band * self.rows, (band + 1) * self.rows):
                    h = (h ^ sig[:, col]) * np.uint64(0x100000001B3)
                    h ^= h >> np.uint64(29)
                buckets.append(h)
        bucket = np.concatenate(buckets) if buckets else np.empty(0, np.uint64)
        return {"bucket": bucket, "bpart": (bucket % np.uint64(self.partitions)).astype(np.int64),
                "id": np.tile(batch["id"], self.bands), "order": np.tile(batch["order"], self.bands)}  # fmt: skip


def _pairs(group: dict) -> dict:
    """One partition of band rows: every pair of documents sharing a bucket, earlier document first."""
    order = np.argsort(group["bucket"], kind="stable")
    bucket, ids, orders = group["bucket"][order], group["id"][order], group["order"][order]
    lo_id, hi_id = [], []
    start = 0
    for end in np.flatnonzero(np.diff(bucket)).tolist() + [len(bucket) - 1]:
        members = sorted(zip(orders[start : end + 1], ids[start : end + 1], strict=True))
        for i, (_, a) in enumerate(members):
            for _, b in members[i + 1 :]:
                lo_id.append(a)
                hi_id.append(b)
        start = end + 1
    return {"lo_id": np.array(lo_id, dtype=object), "hi_id": np.array(hi_id, dtype=object)}


class _Verify:
    """Joined pairs -> edges {lo_id, hi_id, jaccard, estimate} with estimate >= floor and jaccard >= threshold."""

    def __init__(self, threshold: float, floor: float):
        self.threshold, self.floor = threshold, floor

    def __call__(self, batch: dict) -> dict:
        keep_lo, keep_hi, js, ests = [], [], [], []
        columns = ("lo_id", "hi_id", "sig_lo", "sig_hi", "shingles_lo", "shingles_hi")
        for lo, hi, s_lo, s_hi, sh_lo, sh_hi in zip(*(batch[c] for c in columns), strict=True):
            estimate = float(np.count_nonzero(np.asarray(s_lo) == np.asarray(s_hi))) / len(s_lo)
            if estimate < self.floor:
                continue
            j = exact_jaccard(np.asarray(sh_lo, dtype=np.uint32), np.asarray(sh_hi, dtype=np.uint32))
            if j >= self.threshold:
                keep_lo.append(lo)
                keep_hi.append(hi)
                js.append(j)
                ests.append(estimate)
        return {"lo_id": np.array(keep_lo, dtype=object), "hi_id": np.array(keep_hi, dtype=object),
                "jaccard": np.array(js, dtype=np.float64), "estimate": np.array(ests, dtype=np.float64)}  # fmt: skip


def decide_from_edges(reps: list[tuple[str, str]], edges: list[dict], copies: list[dict]) -> list[dict]:
    """The keep rule over near-duplicate edges, equal to DedupIndex.add's sequential decisions.

    ``reps``: (order, id) of every representative that has an edge; ``edges``: {lo_id, hi_id, jaccard,
    estimate}; ``copies``: {id, order, rep, rep_order}. Returns removals {id, reason, duplicate_of, jaccard,
    estimate} (near for representatives, exact or near for copies)."""
    order_of = dict((i, o) for o, i in reps)
    neighbours: dict[str, list[tuple[str, float, float]]] = defaultdict(list)
    for e in edges:
        neighbours[e["lo_id"]].append((e["hi_id"], e["jaccard"], e["estimate"]))
        neighbours[e["hi_id"]].append((e["lo_id"], e["jaccard"], e["estimate"]))
    kept: set[str] = set()
    removed: dict[str, dict] = {}

    def best_kept_before(node: str, before: str) -> dict | None:
        best = None
        for other, j, est in sorted(set(neighbours[node]), key=lambda n: order_of[n[0]]):
            if other in kept and order_of[other] < before and (best is None or j > best[1]):
                best = (other, j, est)
        if best is None:
            return None
        return {
            "reason": "near",
            "duplicate_of": best[0],
            "jaccard": round(best[1], 4),
            "estimate": round(best[2], 4),
        }

    for order, node in sorted(reps):
        found = best_kept_before(node, order)
        if found is None:
            kept.add(node)
        else:
            removed[node] = {"id": node, **found}
    out = list(removed.values())
    for copy in sorted(copies, key=lambda c: c["order"]):
        if copy["rep"] not in removed:
            out.append({"id": copy["id"], "reason": "exact", "duplicate_of": copy["rep"], "jaccard": 1.0,
                        "estimate": 1.0})  # fmt: skip
        else:
            found = best_kept_before(copy["rep"], copy["order"])
            out.append({"id": copy["id"], **found})
    return out


def curate_on_ray(
    drops: dict[str, Path], out_dir: Path, cfg: DedupConfig, ray_address: str | None = None
) -> dict:
    """Curate ``drops`` ({drop: raw documents.parquet}) into ``out_dir`` on Ray Data: documents.parquet,
    removed.json and clusters.json as the single-process path writes them (no index). Returns the summary
    curation.curate returns (clusters: the 20 largest)."""
    info = ensure_ray(ray_address)
    import ray
    from ray.data.expressions import col

    ray.data.DataContext.get_current().enable_progress_bars = False
    partitions = cfg.shuffle_partitions or max(4, 2 * int(info.get("num_cpus") or 1))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".ray-dedup.", dir=out_dir))
    paths = [str(drops[d]) for d in sorted(drops)]
    prepared = (
        ray.data.read_parquet(paths)
        .map_batches(
            _Prepare,
            fn_constructor_kwargs={"cfg_json": cfg.model_dump_json(), "partitions": partitions},
            batch_format="pyarrow",
            batch_size=256,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=partitions),
        )  # fmt: skip
        .materialize()
    )
    prepared.filter(expr=col("kind") != "doc").select_columns(["kind", "record"]).write_parquet(
        str(scratch / "side")
    )
    grouped = (
        prepared.filter(expr=col("kind") == "doc")
        .groupby("part", num_partitions=partitions)
        .map_groups(_representatives, batch_format="pyarrow")
        .materialize()
    )
    reps = grouped.filter(expr=col("id") == col("rep"))
    grouped.filter(expr=col("id") != col("rep")).select_columns(
        ["id", "order", "rep", "rep_order"]
    ).write_parquet(str(scratch / "copies"))
    lsh = make_lsh(cfg)
    pairs = (
        reps.select_columns(["id", "order", "sig"])
        .map_batches(
            _Bands,
            fn_constructor_kwargs={"bands": lsh.b, "rows": lsh.r, "partitions": partitions},
            batch_format="numpy",
        )  # fmt: skip
        .groupby("bpart", num_partitions=partitions)
        .map_groups(_pairs, batch_format="numpy")
    )
    vectors = reps.select_columns(["id", "sig", "shingles"])
    joined = pairs.join(
        vectors.rename_columns({"id": "lo_id", "sig": "sig_lo", "shingles": "shingles_lo"}),
        join_type="inner", num_partitions=partitions, on=("lo_id",),
    ).join(
        vectors.rename_columns({"id": "hi_id", "sig": "sig_hi", "shingles": "shingles_hi"}),
        join_type="inner", num_partitions=partitions, on=("hi_id",),
    )  # fmt: skip
    floor = cfg.threshold - cfg.prefilter_margin
    joined.map_batches(_Verify, fn_constructor_kwargs={"threshold": cfg.threshold, "floor": floor},
                       batch_format="numpy").write_parquet(str(scratch / "edges"))  # fmt: skip
    reps.select_columns(["id", "order", "record"]).sort("order").write_parquet(str(scratch / "reps"))
    finish = ray.remote(num_cpus=1)(_finish)
    summary = ray.get(finish.remote(str(scratch), str(out_dir), cfg.model_dump_json(), sorted(drops)))
    shutil.rmtree(scratch, ignore_errors=True)
    return summary


def _read_parts(folder: Path, columns: list[str] | None = None) -> pa.Table:
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables) if tables else pa.table({c: [] for c in columns or []})


def _finish(scratch: str, out_dir: str, cfg_json: str, drops: list[str]) -> dict:
    """The keep rule and the outputs, on a worker: reads the edges, copies and side rows, writes the kept
    documents in (drop, source) order, removed.json and clusters.json; returns the summary."""
    scratch, out_dir = Path(scratch), Path(out_dir)
    edges = _read_parts(scratch / "edges", ["lo_id", "hi_id", "jaccard", "estimate"]).to_pylist()
    copies = _read_parts(scratch / "copies", ["id", "order", "rep", "rep_order"]).to_pylist()
    reps = _read_parts(scratch / "reps", ["id", "order"])
    order_of = dict(zip(reps["id"].to_pylist(), reps["order"].to_pylist(), strict=True))
    del reps
    linked = {e["lo_id"] for e in edges} | {e["hi_id"] for e in edges}
    removals = decide_from_edges([(order_of[i], i) for i in linked], edges, copies)
    order_of.update({c["id"]: c["order"] for c in copies})
    kept = _write_kept(scratch / "reps", {r["id"] for r in removals}, out_dir / DOCUMENTS)
    side = _read_parts(scratch / "side", ["kind", "record"]).to_pylist()
    report = {
        "removed": [],
        "quality_removed": [],
        "oversized": [],
        "pii_counts": dict.fromkeys(pii.PII_TYPES, 0),
    }
    for row in side:
        record = json.loads(row["record"])
        if row["kind"] == "pii":
            for kind, n in record.items():
                report["pii_counts"][kind] = report["pii_counts"].get(kind, 0) + n
        else:
            report["quality_removed" if row["kind"] == "quality" else "oversized"].append(record)
    for r in sorted(removals, key=lambda r: order_of[r["id"]]):
        drop, source = order_of[r["id"]].split(SEP, 1)
        report["removed"].append({"id": r["id"], "source": source, "drop": drop, "reason": r["reason"],
                                  "duplicate_of": r["duplicate_of"], "jaccard": r["jaccard"]})  # fmt: skip
    summarize(report, kept)
    report["run"] = {"mode": "full", "why": "curated on Ray Data", "drops_curated": drops,
                     "documents_read": report["stats"]["input"], "signed_on": "ray"}  # fmt: skip
    write_json(report, out_dir / REPORT)
    clusters = clusters_of(report["removed"])
    write_json(clusters, out_dir / CLUSTERS)
    return {
        **{k: report[k] for k in ("stats", "quality_counts", "pii_counts", "run")},
        "clusters": clusters[:20],
    }


def _write_kept(reps: Path, removed: set[str], path: Path) -> int:
    """Stream the sorted representatives' records, one part file at a time, into one Parquet file of the kept
    documents in (drop, source) order (written beside ``path``, then renamed); returns how many were kept.
    The sort's parts are disjoint ranges: ordered by their smallest key they are in order (checked; parts
    that overlap are merged in memory instead)."""
    parts = [(pq.read_table(f, columns=["order"]).column("order"), f) for f in sorted(reps.glob("*.parquet"))]
    parts = sorted((pc.min(col).as_py(), pc.max(col).as_py(), f) for col, f in parts if len(col))
    ordered = all(parts[i][1] < parts[i + 1][0] for i in range(len(parts) - 1))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    writer, kept = None, 0
    try:
        batches = [(f,) for _, _, f in parts] if ordered else [tuple(f for _, _, f in parts)]
        for files in batches:
            table = pa.concat_tables([pq.read_table(f, columns=["order", "id", "record"]) for f in files])
            table = table.sort_by("order")
            records = [json.loads(r) for i, r in zip(table["id"].to_pylist(), table["record"].to_pylist(),
                                                     strict=True) if i not in removed]  # fmt: skip
            if not records:
                continue
            chunk = pa.Table.from_pylist(records, schema=writer.schema if writer else None)
            writer = writer or pq.ParquetWriter(tmp, chunk.schema)
            writer.write_table(chunk)
            kept += len(records)
        if writer is None:
            require_documents([], "dedup_corpus (after curation)")
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return kept
