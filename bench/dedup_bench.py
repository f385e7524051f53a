"""Dedup benchmark: throughput and near-duplicate precision/recall against datasketch's per-document loop.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/dedup_bench.py            # or: make bench

What it does, all in one process on one core:
1. Builds a labeled set from the Python documentation shipped by python3-doc: ``--docs`` base documents of
   ``--words`` words (distinct windows of real text), plus near-copies of some of them at word-edit rates
   (substitutions, deletions, insertions) drawn uniformly from ``--min-edit``..``--max-edit`` (``--spread
   continuous``, the default: true similarities spread evenly across the threshold) or from fixed rates
   (``--spread fixed``). The true Jaccard similarity of every copy to its base is computed exactly from the
   5-word shingle sets; a pair is a true duplicate when it is >= the threshold.
2. Runs the graph's dedup (phases.data.dedup.find_duplicates: Signer + LSH + the estimate as pre-filter +
   exact shingle Jaccard) and the baselines: the same exact pass, the same LSH (BandIndex) and exact
   verification (of Python sets of shingle strings), but each document signed the straightforward way,
   ``m = MinHash(num_perm); for s in shingles: m.update(s)`` (or datasketch's MinHash.bulk); and, for the
   quality comparison, that loop deciding by the MinHash estimate alone (how dedup_corpus decided before
   exact verification). All see the same documents in the same order.
3. Reports documents per second per core, their ratios, the peak memory each allocates (tracemalloc, in a
   separate untimed run), the seconds of each stage of ours (shingle: tokenize and exact keys; sign: shingle
   hashes and MinHash; lsh: query and insert; verify: estimate pre-filter and exact Jaccard; read and write:
   the documents from and the kept ones to Parquet, as dedup_corpus does), and precision/recall against the
   labels (a removal is correct when the true Jaccard with the document it was matched to is >= threshold),
   overall and in bands of true Jaccard around the threshold (below it: the share wrongly removed; above:
   the share found).

Timings on shared machines are noisy: read the ratio, measured in the same run, not the absolute numbers.
"""

import argparse
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasketch import MinHash, MinHashLSH

from finetune_assets.phases.data import demo_seed
from finetune_assets.phases.data.dedup import exact_key, find_duplicates, shingles
from finetune_assets.phases.data.dedup_index import BandIndex
from finetune_assets.phases.text import rst

# Word-edit rates of the near-copies. With 5-word shingles one edit touches up to 5 shingles, so the
# Jaccard similarity is about (1 - 5e) / (1 + 5e): 0.8 sits near e = 2.2%. Rates on both sides of it.
EDIT_RATES = (0.0025, 0.005, 0.01, 0.015, 0.04, 0.08, 0.2)


def base_documents(count: int, words: int, seed: int) -> list[list[str]]:
    """``count`` distinct windows of ``words`` words from the Python docs' reST sources."""
    sources = demo_seed.find_python_docs()
    if sources is None:
        raise SystemExit("python3-doc is not installed: run `bash scripts/setup.sh` first")
    stream: list[str] = []
    for path in sorted(sources.rglob("*.txt")):
        stream += rst.clean_inline(path.read_text(encoding="utf-8", errors="replace")).split()
    starts = list(range(0, len(stream) - words, words))
    random.Random(seed).shuffle(starts)
    docs, seen = [], set()
    for start in starts:
        window = stream[start : start + words]
        key = exact_key(" ".join(window))
        if key not in seen:
            seen.add(key)
            docs.append(window)
        if len(docs) == count:
            return docs
    raise SystemExit(f"only {len(docs)} distinct windows of {words} words available; lower --docs")


def edit(words: list[str], rate: float, vocab: list[str], rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(max(1, round(rate * len(words)))):
        i, op = rng.randrange(len(out)), rng.choice("sdi")
        if op == "s":
            out[i] = rng.choice(vocab)
        elif op == "d" and len(out) > 10:
            del out[i]
        else:
            out.insert(i, rng.choice(vocab))
    return out


def true_jaccard(a: str, b: str, k: int) -> float:
    sa, sb = set(shingles(a, k)), set(shingles(b, k))
    return len(sa & sb) / len(sa | sb)


def labeled_set(
    count: int, words: int, copies: int, seed: int, spread: str = "continuous", edits=(0.002, 0.12)
) -> tuple[list[str], list[int | None]]:
    """Texts (bases first, then the near-copies in random order) and, per text, the base it copies."""
    bases = base_documents(count, words, seed)
    rng = random.Random(seed + 1)
    vocab = sorted({w for doc in bases for w in doc})

    def rate() -> float:
        return rng.uniform(*edits) if spread == "continuous" else rng.choice(EDIT_RATES)

    pairs = [(b, edit(bases[b], rate(), vocab, rng)) for b in rng.sample(range(count), copies)]
    rng.shuffle(pairs)
    texts = [" ".join(d) for d in bases] + [" ".join(c) for _, c in pairs]
    return texts, [None] * count + [b for b, _ in pairs]


def baseline_dedup(
    texts: list[str],
    num_perm: int,
    threshold: float,
    k: int,
    bulk: bool = False,
    exact: bool = True,
    margin: float = 0.15,
) -> list[dict]:
    """The graph's algorithm with datasketch's straightforward signing: one MinHash per document,
    updated shingle by shingle (``bulk``: datasketch's MinHash.bulk instead, for reference); the same LSH as
    ours (BandIndex, with the bands and rows datasketch picks); candidates pre-filtered by the estimate and
    decided by the exact Jaccard of the shingle sets (``exact=False``: by the estimate alone). Each
    document's shingles are computed once."""
    banding = MinHashLSH(threshold=threshold * 0.8, num_perm=num_perm)
    lsh = BandIndex(banding.b, banding.r)
    first_by_key, sketches, sets, removed = {}, {}, {}, []
    bulk_sketches = iter(MinHash.bulk([shingles(t, k) for t in texts], num_perm=num_perm)) if bulk else None
    for i, text in enumerate(texts):
        key = exact_key(text)
        m = next(bulk_sketches) if bulk else None
        if key in first_by_key:
            removed.append({"index": i, "duplicate_of": first_by_key[key]})
            continue
        first_by_key[key] = i
        mine = shingles(text, k)
        if not bulk:
            m = MinHash(num_perm=num_perm)
            for shingle in mine:
                m.update(shingle)
        mine = set(mine) if exact else None
        best, best_j = None, 0.0
        for candidate in sorted(lsh.query(m.hashvalues)):
            j = m.jaccard(sketches[candidate])
            if exact:
                if j < threshold - margin:
                    continue
                j = len(mine & sets[candidate]) / len(mine | sets[candidate])
            if j >= threshold and j > best_j:
                best, best_j = candidate, j
        if best is None:
            lsh.insert(i, m.hashvalues)
            sketches[i] = m
            if exact:
                sets[i] = mine
        else:
            removed.append({"index": i, "duplicate_of": best})
    return removed


BAND_EDGES = (-0.1, -0.05, -0.02, 0.0, 0.02, 0.05, 0.1)  # true Jaccard - threshold


def score(texts, copy_of, removed, threshold, k) -> dict:
    """Precision/recall of removals against the true shingle Jaccard, overall and per band of it."""
    truth = {i: true_jaccard(texts[i], texts[b], k) for i, b in enumerate(copy_of) if b is not None}
    positives = {i for i, j in truth.items() if j >= threshold}
    correct = sum(true_jaccard(texts[r["index"]], texts[r["duplicate_of"]], k) >= threshold for r in removed)
    gone = {r["index"] for r in removed}
    found = gone & positives
    bands = {}
    edges = [-1.0, *BAND_EDGES, 1.0]
    for low, high in zip(edges, edges[1:], strict=False):
        members = [i for i, j in truth.items() if low <= j - threshold < high]
        name = f"[{threshold + low:.2f}, {threshold + high:.2f})" if -1 < low and high < 1 else (
            f"< {threshold + high:.2f}" if low == -1 else f">= {threshold + low:.2f}")  # fmt: skip
        hit = sum(i in gone for i in members)
        share = round(hit / len(members), 3) if members else None
        bands[name] = {"copies": len(members), "removed": hit, "share_removed": share}
    return {
        "precision": correct / len(removed) if removed else 1.0,
        "recall": len(found) / len(positives) if positives else 1.0,
        "true_pairs": len(positives),
        "removed": len(removed),
        "copies_below_threshold": len(truth) - len(positives),
        "bands": bands,
    }


def peak_mib(fn) -> float:
    """Peak memory Python and numpy allocate while ``fn`` runs (tracemalloc; the inputs are already built)."""
    tracemalloc.start()
    try:
        fn()
        return round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
    finally:
        tracemalloc.stop()


def timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def stage_seconds(texts: list[str], num_perm: int, threshold: float, k: int) -> dict:
    """Seconds of each stage of one pass (untimed otherwise): read the documents from Parquet, shingle,
    sign, lsh, verify (find_duplicates' own), write the kept ones to Parquet."""
    import tempfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "documents.parquet"
        pq.write_table(pa.table({"id": [str(i) for i in range(len(texts))], "text": texts}), path)
        started = time.perf_counter()
        table = pq.read_table(path)
        read_texts = table.column("text").to_pylist()
        stages = {"read": time.perf_counter() - started}
        removed = {d["index"] for d in find_duplicates(read_texts, num_perm, threshold, k, times=stages)}
        started = time.perf_counter()
        pq.write_table(
            table.filter(pa.array([i not in removed for i in range(len(texts))])), Path(tmp) / "kept.parquet"
        )
        stages["write"] = time.perf_counter() - started
    return stages


def incremental_equals_all_at_once(
    texts: list[str], num_perm: int, threshold: float, k: int, drops: int = 5
) -> bool:
    """The texts cut into ``drops`` consecutive drops, each decided against the index saved after the one
    before (loaded memory-mapped, as dedup_corpus's incremental mode does): same findings as one pass?"""
    import tempfile

    from finetune_assets.config import DedupConfig
    from finetune_assets.phases.data.dedup import DedupIndex, decide

    cfg = DedupConfig(num_perm=num_perm, threshold=threshold, shingle_words=k)
    ids = [str(i) for i in range(len(texts))]
    at_once = decide(ids, texts, DedupIndex(cfg))
    step, found = -(-len(texts) // drops), []
    with tempfile.TemporaryDirectory() as tmp:
        index = DedupIndex(cfg)
        for start in range(0, len(texts), step):
            found += decide(ids[start : start + step], texts[start : start + step], index)
            index.save(Path(tmp) / "index")
            index = DedupIndex.load(Path(tmp) / "index", cfg)
    return found == at_once


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000, help="distinct base documents")
    parser.add_argument("--copies", type=int, default=600, help="near-copies at the known edit rates")
    parser.add_argument("--spread", choices=["continuous", "fixed"], default="continuous",
                        help="edit rates: uniform in [--min-edit, --max-edit], or the fixed EDIT_RATES")  # fmt: skip
    parser.add_argument("--min-edit", type=float, default=0.002)
    parser.add_argument("--max-edit", type=float, default=0.12)
    parser.add_argument("--words", type=int, default=300, help="words per base document")
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.8)
    parser.add_argument("--shingle-words", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats (best of)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    texts, copy_of = labeled_set(args.docs, args.words, args.copies, args.seed, args.spread,
                                 (args.min_edit, args.max_edit))  # fmt: skip
    k, n = args.shingle_words, len(texts)
    ours_s, ours = timed(lambda: find_duplicates(texts, args.num_perm, args.threshold, k), args.repeat)
    base_s, base = timed(lambda: baseline_dedup(texts, args.num_perm, args.threshold, k), args.repeat)
    bulk_s, bulk = timed(
        lambda: baseline_dedup(texts, args.num_perm, args.threshold, k, bulk=True), args.repeat
    )
    estimate_only = baseline_dedup(texts, args.num_perm, args.threshold, k, exact=False)
    stages = stage_seconds(texts, args.num_perm, args.threshold, k)
    peaks = {
        "ours": peak_mib(lambda: find_duplicates(texts, args.num_perm, args.threshold, k)),
        "baseline": peak_mib(lambda: baseline_dedup(texts, args.num_perm, args.threshold, k)),
        "bulk": peak_mib(lambda: baseline_dedup(texts, args.num_perm, args.threshold, k, bulk=True)),
    }
    result = {
        "documents": n,
        "words_per_document": args.words,
        "num_perm": args.num_perm,
        "threshold": args.threshold,
        "ours_docs_per_s_per_core": round(n / ours_s, 1),
        "baseline_docs_per_s_per_core": round(n / base_s, 1),
        "bulk_docs_per_s_per_core": round(n / bulk_s, 1),
        "throughput_ratio": round(base_s / ours_s, 2),
        "ratio_vs_bulk": round(bulk_s / ours_s, 2),
        "ours": score(texts, copy_of, ours, args.threshold, k),
        "baseline": score(texts, copy_of, base, args.threshold, k),
        "bulk": score(texts, copy_of, bulk, args.threshold, k),
        "estimate_only": score(texts, copy_of, estimate_only, args.threshold, k),
        "ours_stage_s": {name: round(v, 3) for name, v in stages.items()},
        "incremental_equals_all_at_once": incremental_equals_all_at_once(
            texts, args.num_perm, args.threshold, k
        ),
        "peak_mib": peaks,
    }
    print(f"{n} documents of ~{args.words} words, num_perm={args.num_perm}, threshold={args.threshold}")
    print(f"{'':13} {'docs/s/core':>9} {'precision':>10} {'recall':>8} {'peak MiB':>9}")
    for name in ("ours", "baseline", "bulk", "estimate_only"):
        rate = result.get(f"{name}_docs_per_s_per_core")
        s = result[name]
        peak = result["peak_mib"].get(name, "-")
        print(f"{name:13} {rate if rate else '-':>9} {s['precision']:10.3f} {s['recall']:8.3f} {peak:>9}")
    print("ours by stage (s): " + ", ".join(f"{k} {v}" for k, v in result["ours_stage_s"].items()))
    print(
        f"5 drops decided one by one against the saved index = all at once: {result['incremental_equals_all_at_once']}"
    )
    print("share of copies removed by band of true Jaccard (below the threshold: wrong; above: found):")
    print(f"{'band':16}{'copies':>7}" + "".join(f"{n:>15}" for n in ("ours", "estimate_only")))
    for band, row in result["ours"]["bands"].items():
        cells = "".join(f"{result[n]['bands'][band]['share_removed'] if row['copies'] else '-':>15}"
                        for n in ("ours", "estimate_only"))  # fmt: skip
        print(f"{band:16}{row['copies']:>7}{cells}")
    print(
        f"throughput ratio (ours / datasketch per-document MinHash.update loop): {result['throughput_ratio']}x"
    )
    print(f"(ours / datasketch MinHash.bulk, same LSH and verification: {result['ratio_vs_bulk']}x)")
    print(
        f"labels: {result['ours']['true_pairs']} copies at Jaccard >= {args.threshold}, "
        f"{result['ours']['copies_below_threshold']} below it, {args.docs} distinct bases"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
