"""Backfill bench: N data drops curated one by one (each drop ingested, then dedup_corpus rebuilt
incrementally, as the landing sensor + a retrain per drop would) against a backfill (every drop ingested, then
one dedup_corpus over all of them). Both must give the same dedup_corpus; it reports both wall times and peak
memory, each path in its own process.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/backfill_bench.py --drops 50      # ~1-2 min on one core

The drops are windows of real text from the Python docs (python3-doc), and every drop after the first repeats
some documents of earlier drops, exact and near copies (a few words edited), so that the dedup decisions cross
drops: the earliest drop keeps a document, later copies are removed.
It calls the functions the assets call (phases.data.corpus.ingest_drop, phases.data.curation.curate), with the
demo profile's corpus and dedup settings; the Dagster run around them is the same in both paths.
"""

import argparse
import hashlib
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dedup_bench import base_documents, edit  # noqa: E402 - the same real-text windows
from finetune_assets.io import read_records
from finetune_assets.phases.data import corpus, curation
from finetune_assets.recipe import load_profile


def write_drops(landing: Path, drops: int, docs_per_drop: int, words: int, seed: int) -> None:
    """``drops`` folders of text files; from the second drop on, a quarter of each drop copies earlier ones."""
    bases = iter(base_documents(drops * docs_per_drop, words, seed))
    rng = random.Random(seed)
    earlier: list[list[str]] = []
    for d in range(drops):
        folder = landing / f"drop-{d:04d}"
        folder.mkdir(parents=True)
        docs = []
        for i in range(docs_per_drop):
            if earlier and i < docs_per_drop // 4:
                original = rng.choice(earlier)
                doc = original if i % 2 else edit(original, 0.005, original, rng)
            else:
                doc = next(bases)
            docs.append(doc)
            (folder / f"doc-{i:03d}.txt").write_text(" ".join(doc) + "\n")
        earlier += docs


def curate_path(mode: str, landing: Path, out: Path, profile: str) -> dict:
    """One path in this process: 'one-by-one' curates after each drop, 'backfill' once after all."""
    prof = load_profile(profile)
    drops = corpus.list_drops(landing)
    raw = out / "raw"
    started = time.perf_counter()
    ingested: dict[str, Path] = {}
    for drop in drops:
        corpus.ingest_drop(landing, drop, prof.corpus, raw / drop, canaries=[])
        ingested[drop] = raw / drop / "documents.parquet"
        if mode == "one-by-one":
            curation.curate(dict(ingested), out / "dedup", prof.dedup)
    if mode == "backfill":
        curation.curate(ingested, out / "dedup", prof.dedup)
    wall = time.perf_counter() - started
    kept = read_records(out / "dedup" / curation.DOCUMENTS)
    digest = hashlib.sha256(
        json.dumps(sorted((d["id"], d["text"]) for d in kept), ensure_ascii=False).encode()
    ).hexdigest()
    return {
        "mode": mode,
        "drops": len(drops),
        "kept": len(kept),
        "documents": sum(len(read_records(path)) for path in ingested.values()),
        "kept_sha256": digest,
        "wall_s": round(wall, 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--drops", type=int, default=50)
    parser.add_argument("--docs-per-drop", type=int, default=12)
    parser.add_argument("--words", type=int, default=300)
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the report here")
    parser.add_argument("--path", choices=["one-by-one", "backfill"], help=argparse.SUPPRESS)
    parser.add_argument("--landing", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.path:  # a child process: one path, its result as JSON on the last line
        print(json.dumps(curate_path(args.path, args.landing, args.out, args.profile)))
        return 0

    with tempfile.TemporaryDirectory(prefix="backfill-bench-") as tmp:
        landing = Path(tmp) / "landing"
        write_drops(landing, args.drops, args.docs_per_drop, args.words, args.seed)
        results = {}
        for mode in ("one-by-one", "backfill"):
            child = [sys.executable, __file__, "--path", mode, "--landing", str(landing),
                     "--out", str(Path(tmp) / mode), "--profile", args.profile]  # fmt: skip
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    one, back = results["one-by-one"], results["backfill"]
    report = {
        **results,
        "same_dedup_corpus": one["kept_sha256"] == back["kept_sha256"],
        "backfill_speedup": round(one["wall_s"] / back["wall_s"], 2) if back["wall_s"] else None,
    }
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0 if report["same_dedup_corpus"] else 1


if __name__ == "__main__":
    sys.exit(main())
