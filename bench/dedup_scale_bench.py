"""Scale bench of dedup_corpus: the single-process path against the Ray Data path (launch.ray_dedup) on one
generated corpus, each in its own process. Reports per path: wall time, documents/s, the driver's peak RSS
and USS, and the largest Ray worker's peak (VmHWM, polled every 0.2 s by train_bench's DescendantMemory), and
checks both keep the same documents for the same reasons (exit 1 otherwise). The ratio that matters is the
driver's memory: the local path holds the corpus, the Ray driver holds counts.

Run it (one command, from the repo root after `bash scripts/setup.sh`):

    OMP_NUM_THREADS=1 .venv/bin/python bench/dedup_scale_bench.py --docs 200000     # ~15 min on 2 cores
    OMP_NUM_THREADS=1 .venv/bin/python bench/dedup_scale_bench.py --docs 5000       # a quick look

The corpus: ``--drops`` Parquet drops of 200-word documents drawn from a Zipf vocabulary; a fifth of the
documents are near copies of earlier ones (0.2-5% of the words changed, so they spread across the threshold)
and a twentieth exact copies (case and spacing). Quality filters are off (random words are not prose);
size cap, PII redaction, exact and near dedup run as in the graph, with the demo profile's dedup settings.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.train_bench import DescendantMemory  # noqa: E402 - the same sampler as the training bench
from finetune_assets.config import DedupConfig
from finetune_assets.io import write_records_parquet


def write_corpus(folder: Path, docs: int, drops: int, words: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    vocab = np.array([f"t{i}" for i in range(20_000)])
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    weights /= weights.sum()
    per_drop = docs // drops
    made: list[np.ndarray] = []
    paths = {}
    for d in range(drops):
        drop = f"drop-{d:02d}"
        records = []
        for i in range(per_drop):
            roll = rng.random()
            if made and roll < 0.2:
                base = made[rng.integers(len(made))].copy()
                k = max(1, int(len(base) * rng.uniform(0.002, 0.05)))
                base[rng.choice(len(base), size=k, replace=False)] = rng.choice(vocab, size=k, p=weights)
                text = " ".join(base)
            elif made and roll < 0.25:
                text = " ".join(made[rng.integers(len(made))]).upper()
            else:
                base = rng.choice(vocab, size=words, p=weights)
                made.append(base)
                text = " ".join(base)
            rel = f"doc-{i:06d}.txt"
            records.append({"id": f"{drop}/{rel}", "text": text, "source": rel, "drop": drop,
                            "content_hash": "", "title": rel})  # fmt: skip
        paths[drop] = write_records_parquet(records, folder / drop / "documents.parquet")
    return paths


def bench_config() -> DedupConfig:
    from finetune_assets.recipe import load_profile

    cfg = load_profile("demo").dedup
    return cfg.model_copy(update={"quality": cfg.quality.model_copy(update={"enabled": False})})


def run_path(path: str, corpus: Path, out: Path) -> dict:
    from finetune_assets.phases.data import curation

    drops = {d.name: d / "documents.parquet" for d in sorted(corpus.iterdir()) if d.is_dir()}
    cfg = bench_config().model_copy(update={"distributed": "always" if path == "ray" else "never"})
    distributed = None
    if path == "ray":
        from finetune_assets.launch.ray_cluster import ensure_ray
        from finetune_assets.launch.ray_dedup import curate_on_ray

        ensure_ray(object_store_memory=4 * 2**30)  # started before the clock: a cluster is already up in use
        distributed = curate_on_ray
    with DescendantMemory(every_s=0.2) as memory:
        started = time.perf_counter()
        summary = curation.curate(drops, out, cfg, distributed=distributed)
        wall = time.perf_counter() - started
    return {"path": path, "wall_s": round(wall, 1), "stats": summary["stats"],
            "driver_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "driver_peak_uss_mib": round(memory.peak_own_uss / 2**20, 1),
            "worker_peak_mib": round(memory.ray_worker_peak() / 2**20, 1)}  # fmt: skip


def outcome(out: Path) -> tuple:
    import pyarrow.parquet as pq

    report = json.loads((out / "removed.json").read_text())
    kept = sorted(pq.read_table(out / "documents.parquet", columns=["id"]).column("id").to_pylist())
    return kept, sorted((r["id"], r["reason"], r["duplicate_of"]) for r in report["removed"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--drops", type=int, default=4)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", choices=("local", "ray"), help=argparse.SUPPRESS)  # one path, in a child
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run:
        print(json.dumps(run_path(args.run, args.corpus, args.out)))
        return 0

    with tempfile.TemporaryDirectory(prefix="dedup-scale-", dir=os.environ.get("TMPDIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        write_corpus(work / "corpus", args.docs, args.drops, args.words, args.seed)
        print(f"generated {args.docs} documents in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows = []
        for path in ("local", "ray"):
            cmd = [sys.executable, __file__, "--run", path, "--corpus", str(work / "corpus"),
                   "--out", str(work / path)]  # fmt: skip
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-4000:], file=sys.stderr)
                return 1
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        same = outcome(work / "local") == outcome(work / "ray")
    local, ray_row = rows
    for row in rows:
        row["docs_per_s"] = round(args.docs / row["wall_s"], 1)
    ratios = {"throughput": round(ray_row["docs_per_s"] / local["docs_per_s"], 2),
              "driver_peak": round(ray_row["driver_peak_mib"] / local["driver_peak_mib"], 2)}  # fmt: skip
    report = {"docs": args.docs, "drops": args.drops, "same_kept_set_and_reasons": same, "paths": rows,
              "ray_vs_local": ratios}  # fmt: skip
    print(json.dumps(report, indent=2))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
