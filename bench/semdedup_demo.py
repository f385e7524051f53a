"""What the semantic dedup stage (dedup.semantic) removes on the demo corpus, on top of exact and near dedup.

Seeds the demo landing folder (the Python docs, as raw_corpus does), ingests its drops, and curates them twice
with the demo profile's dedup settings: semantic off, then on (the second run reuses nothing but the raw
drops, so its time includes every embedding). Reports both runs' counts, the embedding time, the cosine
distribution of the removals and the closest and the loosest pairs it removed, so a user can judge the
threshold on real pages.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/semdedup_demo.py [--threshold 0.7]      # ~5 min on one core
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune_assets.phases.data import corpus, curation
from finetune_assets.phases.data.demo_seed import seed_demo_landing
from finetune_assets.recipe import load_profile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--threshold", type=float, help="dedup.semantic.threshold (default: the config's)")
    parser.add_argument("--examples", type=int, default=8)
    args = parser.parse_args(argv)
    profile = load_profile(args.profile)
    semantic = profile.dedup.semantic.model_copy(update={"enabled": True})
    if args.threshold is not None:
        semantic = semantic.model_copy(update={"threshold": args.threshold})
    with tempfile.TemporaryDirectory(prefix="semdedup-demo-") as tmp:
        work = Path(tmp)
        seed_demo_landing(work / "landing", profile.corpus)
        drops = {}
        for drop in corpus.list_drops(work / "landing"):
            corpus.ingest_drop(work / "landing", drop, profile.corpus, work / "raw" / drop, canaries=[])
            drops[drop] = work / "raw" / drop / "documents.parquet"
        runs = {}
        for name, cfg in (
            ("off", profile.dedup),
            ("on", profile.dedup.model_copy(update={"semantic": semantic})),
        ):
            started = time.perf_counter()
            summary = curation.curate(drops, work / name, cfg)
            runs[name] = {"stats": summary["stats"], "wall_s": round(time.perf_counter() - started, 1)}
        removed = json.loads((work / "on" / curation.REPORT).read_text())["removed"]
    semantic_rows = sorted((r for r in removed if r["reason"] == "semantic"), key=lambda r: -r["cosine"])
    cosines = [r["cosine"] for r in semantic_rows]
    lows = [semantic.threshold + 0.05 * i for i in range(int((1 - semantic.threshold) / 0.05) + 1)]
    bands = {f"{lo:.2f}-{lo + 0.05:.2f}": sum(lo <= c < lo + 0.05 for c in cosines) for lo in lows}
    pair = lambda r: {"removed": r["id"], "kept": r["duplicate_of"], "cosine": r["cosine"]}  # noqa: E731
    report = {
        "threshold": semantic.threshold,
        "documents": runs["off"]["stats"]["input"],
        "kept_without_semantic": runs["off"]["stats"]["kept"],
        "semantic_removed": runs["on"]["stats"]["semantic_removed"],
        "share_of_kept_removed": round(
            runs["on"]["stats"]["semantic_removed"] / runs["off"]["stats"]["kept"], 4
        ),
        "wall_s": {"off": runs["off"]["wall_s"], "on": runs["on"]["wall_s"]},
        "removals_by_cosine": bands,
        "closest": [pair(r) for r in semantic_rows[: args.examples]],
        "loosest": [pair(r) for r in semantic_rows[-args.examples :]],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
