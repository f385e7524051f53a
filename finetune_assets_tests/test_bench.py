"""The benchmarks run end to end on a small input (their figures are for the note, never asserted here)."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dedup_bench_labels_and_scores(tmp_path):
    bench = _load("dedup_bench")
    out = tmp_path / "dedup.json"
    result = bench.main(
        ["--docs", "60", "--copies", "30", "--words", "120", "--repeat", "1", "--json", str(out)]
    )
    assert out.is_file() and result["documents"] == 90
    assert result["ours"]["true_pairs"] + result["ours"]["copies_below_threshold"] == 30
    assert result["ours"]["recall"] >= 0.9 and result["baseline"]["recall"] >= 0.9
    # exact verification: every removal is a true duplicate, for ours and for the baselines verified alike
    assert result["ours"]["precision"] == 1.0 and result["baseline"]["precision"] == 1.0
    assert sum(band["copies"] for band in result["ours"]["bands"].values()) == 30
    assert result["estimate_only"]["removed"] > 0


def test_backfill_bench_curates_the_same_corpus_both_ways(tmp_path):
    bench = _load("backfill_bench")
    out = tmp_path / "backfill.json"
    assert bench.main(["--drops", "50", "--docs-per-drop", "8", "--words", "120", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    one, back = report["one-by-one"], report["backfill"]
    assert report["same_dedup_corpus"] and one["drops"] == back["drops"] == 50
    assert one["kept"] == back["kept"] < one["documents"]  # copies across drops were removed, the same ones


def test_serve_load_bench_reports_every_level_and_no_failure_beyond_429(tmp_path):
    bench = _load("serve_load")
    out = tmp_path / "report.json"
    assert bench.main(["--requests", "8", "--clients", "1,4", "--max-tokens", "4", "--max-queue", "1",
                       "--output", str(out)]) == 0  # fmt: skip
    report = json.loads(out.read_text())
    assert [row["clients"] for row in report["levels"]] == [1, 4]
    assert all(row["statuses"]["200"] == 8 for row in report["levels"])  # every request answered in the end
    assert report["levels"][0]["throughput_vs_first_level"] == 1.0 and report["failures_beyond_429"] == {}
    assert len(report["server_rss_mib"]) == 3 and all(m > 0 for m in report["server_rss_mib"])
