"""What the semantic dedup stage (dedup.semantic) would remove on the demo corpus, on top of exact and near
dedup, at several thresholds.

Seeds the demo landing folder (the Python docs, as raw_corpus does), ingests its drops, curates them with the
demo profile's dedup settings (semantic off), embeds the kept documents once (phases.data.semdedup, as the
stage does) and applies the stage's keep rule at each ``--thresholds`` value. Reports per threshold how many
documents it removes and the share of the corpus, and at ``--show`` the closest and the loosest pairs by
their sources, so a user can judge the threshold on real pages before turning the stage on.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/semdedup_demo.py            # ~4 min on one core
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_assets.io import read_records
from finetune_assets.phases.data import corpus, curation, semdedup
from finetune_assets.phases.data.demo_seed import seed_demo_landing
from finetune_assets.recipe import load_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--thresholds", default="0.7,0.8,0.85,0.9,0.95")
    parser.add_argument("--show", type=float, help="threshold whose pairs are listed (default: the config's)")
    parser.add_argument("--examples", type=int, default=6)
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    cfg = profile.dedup.semantic.model_copy(update={"enabled": True})
    show = args.show if args.show is not None else cfg.threshold
    with tempfile.TemporaryDirectory(prefix="semdedup-demo-") as tmp:
        work = Path(tmp)
        seed_demo_landing(work / "landing", profile.corpus)
        drops = {}
        for drop in corpus.list_drops(work / "landing"):
            corpus.ingest_drop(work / "landing", drop, profile.corpus, work / "raw" / drop, canaries=[])
            drops[drop] = work / "raw" / drop / "documents.parquet"
        summary = curation.curate(drops, work / "out", profile.dedup)
        docs = sorted(read_records(work / "out" / curation.DOCUMENTS), key=lambda d: (d["drop"], d["source"]))
    started = time.perf_counter()
    vectors = semdedup.embed_documents([d["text"] for d in docs], cfg, semdedup.EmbeddingCache(None))
    embed_s = time.perf_counter() - started
    ids = [d["id"] for d in docs]
    source = {d["id"]: f"{d['drop']}/{d['source']}" for d in docs}
    rows, shown = [], []
    for threshold in sorted({float(t) for t in args.thresholds.split(",")} | {show}):
        found = semdedup.find_semantic_duplicates(
            ids, vectors, cfg.model_copy(update={"threshold": threshold})
        )
        rows.append(
            {"threshold": threshold, "removed": len(found), "share": round(len(found) / len(docs), 4)}
        )
        if threshold == show:
            shown = sorted(found, key=lambda f: -f["cosine"])
    pair = lambda f: {"removed": source[f["id"]], "kept": source[f["duplicate_of"]], "cosine": f["cosine"]}  # noqa: E731
    report = {
        "documents_after_near_dedup": len(docs),
        "raw_documents": summary["stats"]["input"],
        "embed_s": round(embed_s, 1),
        "by_threshold": rows,
        "shown_threshold": show,
        "closest": [pair(f) for f in shown[: args.examples]],
        "loosest": [pair(f) for f in shown[-args.examples :]],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
