"""bench/eval_parallel_bench.py end to end on the tiny model (worker processes, seconds). Only the report's
structure is checked, never a timing or a ratio."""

import json
import math

from finetune_assets_tests.test_bench import _load


def test_eval_parallel_bench_tiny_report(tmp_path):
    bench = _load("eval_parallel_bench")
    out = tmp_path / "parallel.json"
    args = ["--model", "tiny", "--prompts", "6", "--batch-size", "2", "--max-new-tokens", "4", "--cores", "2"]
    result = bench.main([*args, "--json", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["prompts"] == 6 and result["cores"] == 2 and result["terms_source"] == "synthetic"
    assert [len(result["wall_s"][k]) for k in ("threaded", "per_core")] == [1, 1]
    for key in ("threaded_s", "per_core_s", "per_core_speedup"):
        assert math.isfinite(result[key]) and result[key] > 0
    assert 0 <= result["identical_answers"] <= 6
